/**
 * Label-private vs standard training, one run, on the Qwen2.5-0.5B-shaped
 * Q8_0 model (real Qwen2 vocabulary): the server runs as its own process on
 * loopback (as a team server does), and each device run is its own child
 * process, alternating modes, so the device's peak RSS and CPU time are the
 * device's alone. Reports wall time of training, device CPU seconds per
 * training token and device peak RSS, label-private / standard, both with
 * the default head update (label-private trains it on the device); and
 * label-private with it / without it (--head-rank 0), its own cost.
 *
 *   npm run bench:label-private [-- --steps 8 --rounds 2]
 *   npm run bench:label-private -- --shape coder-1.5b
 *       the Qwen2.5-Coder-1.5B shape (qwen2, 28 x 1536, Q4_K_M from llama.cpp's
 *       quantizer; written as labelPrivate-coder-1.5b.json): the same
 *       vocabulary, so the head is a smaller share of the device's work
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { addUser, freePort, killHard, startServerProcess } from '../harness/serverProcess';
import { BENCH_CACHE, machineDescription, peakRssBytes, qwenCoder15Model, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';
import { JOB_DEFAULTS } from '../common/jobSettings';

interface DeviceRun {
  mode: 'standard' | 'label-private' | 'label-private-no-head';
  trainWallSeconds: number;
  deviceForwardSeconds: number;
  headSeconds: number;
  serverSeconds: number;
  cpuSeconds: number;
  trainTokens: number;
  peakRssBytes: number;
  heldOutLossAfter: number;
  /** Label-private: the share of training tokens whose gradient took the head's dense product. */
  headDenseShare: number | null;
}

async function child(mode: DeviceRun['mode'], url: string, token: string, steps: number, model: string): Promise<void> {
  const store = fs.mkdtempSync(path.join(BENCH_CACHE, 'lp-device-'));
  try {
    const cpu0 = process.cpuUsage();
    const r = await new FineTuneJob({
      workspace: path.resolve(__dirname, '..', '..', 'extension'), model, storeDir: store, steps, bits: 8, seed: 1,
      maxHeldOutSequences: 4, server: { url, token }, labelPrivate: mode !== 'standard', ...(mode === 'label-private-no-head' ? { headRank: 0 } : {}),
    }).run();
    const cpu = process.cpuUsage(cpu0);
    const t = r.timings;
    const out: DeviceRun = {
      mode, trainWallSeconds: t.trainWallSeconds, deviceForwardSeconds: t.deviceForwardSeconds, headSeconds: t.headSeconds, serverSeconds: t.serverSeconds,
      cpuSeconds: (cpu.user + cpu.system) / 1e6, trainTokens: r.trainTokens, peakRssBytes: peakRssBytes(), heldOutLossAfter: r.heldOutLossAfter,
      headDenseShare: r.head ? r.head.denseTokens / Math.max(1, r.head.gradientTokens) : null,
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  if (process.argv[2] === 'child') return child(arg('mode', 'standard') as DeviceRun['mode'], arg('url', ''), arg('token', ''), Number(arg('steps', '8')), arg('model', ''));
  const steps = Number(arg('steps', '8'));
  const rounds = Number(arg('rounds', '2'));
  const coder = arg('shape', 'qwen2.5-0.5b') === 'coder-1.5b';
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  const model = coder ? await qwenCoder15Model('Q4_K_M') : qwenShapedModel('q8_0'); // generated once, outside the timed runs
  const dataDir = fs.mkdtempSync(path.join(BENCH_CACHE, 'lp-server-'));
  const token = addUser(dataDir, 'bench');
  const { proc, url } = await startServerProcess(dataDir, await freePort());
  const runs: DeviceRun[] = [];
  try {
    // A first standard run uploads the head (cached by the server afterwards); it is not counted.
    for (const [i, mode] of (['standard', ...Array.from({ length: rounds }, () => ['label-private', 'standard', 'label-private-no-head'] as const).flat()] as const).entries()) {
      const r = spawnSync(process.execPath, [__filename, 'child', '--mode', mode, '--url', url, '--token', token, '--steps', String(steps), '--model', model], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (r.status !== 0) throw new RangeError(`device run failed: ${r.stderr.slice(-2000)}`);
      const run = JSON.parse(r.stdout.trim().split('\n').pop()!) as DeviceRun;
      process.stderr.write(`${mode}${i === 0 ? ' (warm-up, head upload)' : ''}: wall ${run.trainWallSeconds.toFixed(1)} s, device forward ${run.deviceForwardSeconds.toFixed(1)} s, head ${run.headSeconds.toFixed(1)} s, server ${run.serverSeconds.toFixed(1)} s, CPU ${run.cpuSeconds.toFixed(1)} s, peak RSS ${(run.peakRssBytes / 2 ** 20).toFixed(0)} MiB\n`);
      if (i > 0) runs.push(run);
    }
  } finally {
    await killHard(proc);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  const mean = (mode: DeviceRun['mode'], f: (r: DeviceRun) => number): number => {
    const xs = runs.filter((r) => r.mode === mode).map(f);
    return xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  const ratio = (f: (r: DeviceRun) => number, base: DeviceRun['mode'] = 'standard'): number => mean('label-private', f) / mean(base, f);
  const out = {
    model: coder ? 'qwen2.5-coder-1.5b-shape-Q4_K_M.gguf (28 layers, d 1536, real Qwen2 vocabulary 151,936, random weights, quantized by llama.cpp)' : 'qwen2.5-0.5b-shape-q8_0.gguf (24 layers, d 896, real Qwen2 vocabulary 151,936, random weights)',
    steps, rounds, bits: 8, server: 'mobillm-server process on loopback, onnxruntime-cpu', headRank: JOB_DEFAULTS.headRank,
    runs,
    labelPrivateOverStandard: {
      wall: ratio((r) => r.trainWallSeconds),
      deviceCpuPerToken: ratio((r) => r.cpuSeconds / r.trainTokens),
      devicePeakRss: ratio((r) => r.peakRssBytes),
    },
    headUpdateOnDevice: {
      note: 'label-private with the head update / label-private without it (--head-rank 0): what training A and B on the device costs',
      wall: ratio((r) => r.trainWallSeconds, 'label-private-no-head'),
      deviceCpuPerToken: ratio((r) => r.cpuSeconds / r.trainTokens, 'label-private-no-head'),
      devicePeakRss: ratio((r) => r.peakRssBytes, 'label-private-no-head'),
      headSecondsWith: mean('label-private', (r) => r.headSeconds),
      headSecondsWithout: mean('label-private-no-head', (r) => r.headSeconds),
    },
    goals: { wall: 1.0, deviceCpuPerToken: 1.25, devicePeakRss: 1.1 },
    machine: machineDescription(),
  };
  writeResult(coder ? 'labelPrivate-coder-1.5b.json' : 'labelPrivate.json', out);
  const r = out.labelPrivateOverStandard;
  console.log(`label-private / standard (${coder ? 'Qwen2.5-Coder-1.5B-shaped Q4_K_M' : 'Qwen2.5-0.5B-shaped Q8_0'}, ${steps} steps x ${rounds}, head update of rank ${out.headRank} in both): wall ${r.wall.toFixed(2)}x (goal <= 1.0), device CPU per token ${r.deviceCpuPerToken.toFixed(2)}x (goal <= 1.25), device peak RSS ${r.devicePeakRss.toFixed(2)}x (goal <= 1.1)`);
  const h = out.headUpdateOnDevice;
  console.log(`the head update on the device (label-private with / without): wall ${h.wall.toFixed(2)}x, device CPU per token ${h.deviceCpuPerToken.toFixed(2)}x, device peak RSS ${h.devicePeakRss.toFixed(2)}x; head ${h.headSecondsWith.toFixed(1)} s against ${h.headSecondsWithout.toFixed(1)} s`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
