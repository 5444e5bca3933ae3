/**
 * The activation cache on the Qwen2.5-0.5B-shaped Q8_0 model: a two-epoch
 * fine-tune of a small workspace, with the epoch boundary taken at the
 * acknowledgement of the first epoch's last step.
 *   device CPU: the server runs as its own process on loopback (as a team
 *     server does), so this process's CPU time is the device's alone; in
 *     label-private mode (a team server's default: the later epoch computes
 *     the head over candidate rows) and in the standard mode;
 *   wall: the same with the embedded server (the default set-up);
 * each as a later epoch over the first, and the cache's disk bytes per
 * cached token.
 *
 * The Qwen-shaped model's weights are random, so its softmax is wide and
 * candidate rows cannot hold a bound on it; `--model standin` runs the two
 * device-CPU runs on the committed stand-in (bench/stand-in/), a model that
 * knows code (a trained model's softmax, though at 6 x 384 still wider than
 * the sparse rule's rows: see docs/benchmarks.md), and writes
 * cache-standin.json.
 *
 *   npm run bench:cache [-- --workspace DIR] [-- --model standin]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { activationCacheFiles } from '../extension/core/job/ActivationCache';
import type { CandidateRowStats } from '../extension/core/job/CandidateRows';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { addUser, freePort, killHard, startServerProcess } from '../harness/serverProcess';
import { BENCH_CACHE, machineDescription, qwenShapedModel } from './lib/benchModels';
import { STAND_IN_MODEL, standInBackbone, standInVocabulary } from './lib/standInModel';
import { writeResult } from './lib/writeResult';

interface EpochRun {
  server: 'process' | 'embedded';
  /** Label-private (a team server's default) or the standard mode. */
  mode: 'label-private' | 'standard';
  /** Label-private: what the head's candidate rows did (CandidateRows.ts). */
  candidateRows?: CandidateRowStats;
  /** Label-private: the share of the job's training tokens whose gradient took the head's dense product (wide distributions: no candidate rows). */
  headDenseShare?: number;
  /** [first epoch, second epoch]: this process's CPU seconds and wall seconds. */
  cpuSeconds: [number, number];
  wallSeconds: [number, number];
  stepsPerEpoch: number;
  cachedBytes: number;
  cachedTokens: number;
}

async function epochs(model: string, workspace: string, server: EpochRun['server'], labelPrivate: boolean, url?: string, token?: string): Promise<EpochRun> {
  const store = fs.mkdtempSync(path.join(BENCH_CACHE, 'cache-device-'));
  try {
    const marks: { cpu: number; wall: number }[] = [];
    const mark = (): void => {
      const c = process.cpuUsage();
      marks.push({ cpu: (c.user + c.system) / 1e6, wall: performance.now() / 1000 });
    };
    let perEpoch = 0;
    let cachedBytes = 0;
    const job = new FineTuneJob({
      workspace, model, storeDir: store, epochs: 2, seed: 1, maxHeldOutSequences: 4, server: url ? { url, token: token! } : undefined, labelPrivate,
      onProgress: (p) => {
        if (p.phase === 'training' && marks.length === 0) mark();
        if (perEpoch === 0 && p.totalSteps > 0) perEpoch = p.totalSteps / 2;
        if (p.phase === 'training' && marks.length === 1 && p.step >= perEpoch) {
          mark();
          cachedBytes = activationCacheFiles(store).reduce((a, f) => a + fs.statSync(f).size, 0);
        }
        if (marks.length === 2 && p.step >= 2 * perEpoch) mark();
      },
    });
    const r = await job.run();
    if (marks.length < 3) throw new RangeError(`the epochs were not seen (${marks.length} marks)`);
    return {
      server, mode: labelPrivate ? 'label-private' : 'standard', candidateRows: r.head?.candidateRows, headDenseShare: r.head && r.head.denseTokens / Math.max(1, r.head.gradientTokens), stepsPerEpoch: perEpoch, cachedBytes, cachedTokens: Math.round(r.trainTokens / 2),
      cpuSeconds: [marks[1]!.cpu - marks[0]!.cpu, marks[2]!.cpu - marks[1]!.cpu],
      wallSeconds: [marks[1]!.wall - marks[0]!.wall, marks[2]!.wall - marks[1]!.wall],
    };
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const workspace = path.resolve(arg('workspace', path.join(__dirname, '..', '..', 'common')));
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  const standIn = arg('model', 'qwen') === 'standin';
  const model = standIn ? (await standInBackbone((line) => void process.stderr.write(`${line}\n`))).pretrained : qwenShapedModel('q8_0');
  const dataDir = fs.mkdtempSync(path.join(BENCH_CACHE, 'cache-server-'));
  const token = addUser(dataDir, 'bench');
  const { proc, url } = await startServerProcess(dataDir, await freePort());
  let separate: EpochRun;
  let standard: EpochRun;
  try {
    separate = await epochs(model, workspace, 'process', true, url, token);
    standard = await epochs(model, workspace, 'process', false, url, token);
  } finally {
    await killHard(proc);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  // The wall run (the embedded server) is the Qwen-shaped model's alone.
  const embedded = standIn ? undefined : await epochs(model, workspace, 'embedded', false);
  const out = {
    model: standIn ? `${path.basename(STAND_IN_MODEL)} as float32 (the committed stand-in: 6 layers, d 384, ${standInVocabulary()}, pretrained on code)` : 'qwen2.5-0.5b-shape-q8_0.gguf (24 layers, d 896, real Qwen2 vocabulary, random weights)',
    workspace: path.relative(path.join(__dirname, '..', '..'), workspace) || '.',
    runs: embedded ? [separate, standard, embedded] : [separate, standard],
    deviceCpuLaterOverFirst: { 'label-private': separate.cpuSeconds[1] / separate.cpuSeconds[0], standard: standard.cpuSeconds[1] / standard.cpuSeconds[0] },
    wallLaterOverFirst: embedded ? embedded.wallSeconds[1] / embedded.wallSeconds[0] : null,
    diskBytesPerCachedToken: separate.cachedBytes / separate.cachedTokens,
    goals: { deviceCpuLaterOverFirst: { 'label-private': 0.25, standard: 0.1 } },
    machine: machineDescription(),
  };
  writeResult(standIn ? 'cache-standin.json' : 'cache.json', out);
  const lp = separate.candidateRows;
  console.log(`later epoch / first: device CPU ${out.deviceCpuLaterOverFirst['label-private'].toFixed(3)}x label-private (goal <= 0.25; candidate rows: ${lp ? `${lp.withinSteps} steps over ${lp.meanRows.toFixed(0)} rows, ${lp.checks} checks, ${lp.failedChecks} failed, largest left out ${lp.leftOutMax.toExponential(2)}; dense tokens ${(100 * (separate.headDenseShare ?? 0)).toFixed(1)}%` : 'off'}), ${out.deviceCpuLaterOverFirst.standard.toFixed(3)}x standard (goal <= 0.1), wall with the embedded server ${out.wallLaterOverFirst === null ? 'not run' : `${out.wallLaterOverFirst.toFixed(3)}x`}; ${out.diskBytesPerCachedToken.toFixed(0)} disk bytes per cached token`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
