import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GraphBuilder } from '../../server/training/onnx/GraphBuilder';
import { skipBecause, tinyModel } from '../helpers/models';
import { tmpDir } from '../helpers/workspaces';
import { isNative, zipEntries } from '../helpers/zip';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const TARGET = `${process.platform}-${process.arch}`;
const VSIX = path.join(ROOT, `mobillm-vscode-${TARGET}.vsix`);


describe('The extension package', () => {
  before(function () {
    if (!fs.existsSync(VSIX)) skipBecause(this, `the extension is not packaged for ${TARGET} (run npm run package): ${VSIX} is absent`);
  });

  it('is marked for its platform and holds at most 300 files, only that platform\'s native files, and at most 5 MB besides them', () => {
    const entries = zipEntries(VSIX);
    const manifest = entries.find((e) => e.name === 'extension.vsixmanifest');
    assert.ok(manifest, 'has a manifest');
    assert.match(manifest.read().toString('utf8'), new RegExp(`TargetPlatform="${TARGET}"`));
    assert.ok(entries.length <= 300, `${entries.length} files`);
    const native = entries.filter((e) => isNative(e.name));
    const foreign = native.filter((e) => /(darwin|win32|mac-|win-|arm64|armv7l|cuda|vulkan)/.test(e.name));
    assert.deepEqual(foreign.map((e) => e.name), []);
    assert.ok(native.some((e) => e.name.endsWith('libllama.v0.4.0.so') || /libllama[^/]*\.so/.test(e.name)), 'llama.cpp is in');
    assert.ok(native.some((e) => e.name.endsWith('onnxruntime_binding.node')), 'ONNX Runtime is in');
    assert.ok(native.some((e) => e.name.endsWith(`out/native/${TARGET}/mobillm.node`)), 'our addon is in');
    const nativeCompressed = native.reduce((s, e) => s + e.compressed, 0);
    const otherBytes = entries.filter((e) => !isNative(e.name)).reduce((s, e) => s + e.size, 0);
    assert.ok(otherBytes <= 5 * 2 ** 20, `${otherBytes} bytes besides the native files`);
    assert.ok(fs.statSync(VSIX).size <= nativeCompressed + 5 * 2 ** 20, 'the package weighs at most its native libraries plus 5 MB');
    assert.ok(!entries.some((e) => e.name.includes('node_modules/node-llama-cpp/')), "node-llama-cpp's JavaScript is bundled, not shipped");
  });

  it('runs from the package alone: ONNX Runtime runs a graph, the addon loads llama.cpp and a model, the hf: resolver loads', () => {
    const dir = tmpDir('vsix');
    for (const e of zipEntries(VSIX)) {
      if (!e.name.startsWith('extension/') || e.name.endsWith('/')) continue;
      const file = path.join(dir, e.name);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, e.read());
    }
    const ext = path.join(dir, 'extension');
    const g = new GraphBuilder('package-check');
    const x = g.input('x', 'float32', [2]);
    g.output(g.add(x, x), 'y', 'float32', [2]);
    const model = Buffer.from(g.build()).toString('base64');
    const script = `
      const path = require('node:path');
      const ext = ${JSON.stringify(ext)};
      (async () => {
        const ort = require(path.join(ext, 'node_modules', 'onnxruntime-node'));
        const session = await ort.InferenceSession.create(Buffer.from('${model}', 'base64'));
        const y = (await session.run({ x: new ort.Tensor('float32', new Float32Array([1, 2]), [2]) })).y;
        const addon = require(path.join(ext, 'out', 'native', '${TARGET}', 'mobillm.node'));
        const backends = addon.ensureBackends(path.join(ext, 'out', 'native', '${TARGET}'), false);
        const b = new addon.Backbone();
        await b.load(${JSON.stringify(tinyModel())}, { contextSize: 64, batchTokens: 32, maxSequences: 1, threads: 1, flashAttention: false });
        const { resolveModelFile } = await import(path.join(ext, 'dist', 'resolveModel.mjs'));
        const resolved = await resolveModelFile(${JSON.stringify(tinyModel())}, { cli: false });
        console.log(JSON.stringify({ y: Array.from(y.data), backends, layers: b.info().nLayer, resolved }));
        b.dispose();
      })().catch((err) => { console.error(err); process.exit(1); });`;
    // A fresh process that cannot see the repository's node_modules.
    const r = spawnSync(process.execPath, ['-e', script], { cwd: dir, encoding: 'utf8', env: { ...process.env, NODE_PATH: '' }, timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { y: number[]; backends: number; layers: number; resolved: string };
    assert.deepEqual(out.y, [2, 4]);
    assert.ok(out.backends >= 1);
    assert.ok(out.layers > 0);
    assert.equal(out.resolved, tinyModel());
  });
});
