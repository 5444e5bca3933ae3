/**
 * The activation cache on the Qwen2.5-0.5B-shaped Q8_0 model: a two-epoch
 * fine-tune of a small workspace, with the epoch boundary taken at the
 * acknowledgement of the first epoch's last step.
 *   device CPU: the server runs as its own process on loopback (as a team
 *     server does), so this process's CPU time is the device's alone;
 *   wall: the same with the embedded server (the default set-up);
 * each as a later epoch over the first, and the cache's disk bytes per
 * cached token.
 *
 *   npm run bench:cache [-- --workspace DIR]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { activationCacheFiles } from '../extension/core/job/ActivationCache';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { addUser, freePort, killHard, startServerProcess } from '../harness/serverProcess';
import { BENCH_CACHE, machineDescription, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

interface EpochRun {
  server: 'process' | 'embedded';
  /** [first epoch, second epoch]: this process's CPU seconds and wall seconds. */
  cpuSeconds: [number, number];
  wallSeconds: [number, number];
  stepsPerEpoch: number;
  cachedBytes: number;
  cachedTokens: number;
}

async function epochs(workspace: string, server: EpochRun['server'], url?: string, token?: string): Promise<EpochRun> {
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
      workspace, model: qwenShapedModel('q8_0'), storeDir: store, epochs: 2, seed: 1, maxHeldOutSequences: 4, server: url ? { url, token: token! } : undefined,
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
      server, stepsPerEpoch: perEpoch, cachedBytes, cachedTokens: Math.round(r.trainTokens / 2),
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
  qwenShapedModel('q8_0');
  const dataDir = fs.mkdtempSync(path.join(BENCH_CACHE, 'cache-server-'));
  const token = addUser(dataDir, 'bench');
  const { proc, url } = await startServerProcess(dataDir, await freePort());
  let separate: EpochRun;
  try {
    separate = await epochs(workspace, 'process', url, token);
  } finally {
    await killHard(proc);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  const embedded = await epochs(workspace, 'embedded');
  const out = {
    model: 'qwen2.5-0.5b-shape-q8_0.gguf (24 layers, d 896, real Qwen2 vocabulary, random weights)',
    workspace: path.relative(path.join(__dirname, '..', '..'), workspace) || '.',
    runs: [separate, embedded],
    deviceCpuLaterOverFirst: separate.cpuSeconds[1] / separate.cpuSeconds[0],
    wallLaterOverFirst: embedded.wallSeconds[1] / embedded.wallSeconds[0],
    diskBytesPerCachedToken: separate.cachedBytes / separate.cachedTokens,
    goals: { deviceCpuLaterOverFirst: 0.1 },
    machine: machineDescription(),
  };
  writeResult('cache.json', out);
  console.log(`later epoch / first: device CPU ${out.deviceCpuLaterOverFirst.toFixed(3)}x (goal <= 0.1), wall with the embedded server ${out.wallLaterOverFirst.toFixed(3)}x; ${out.diskBytesPerCachedToken.toFixed(0)} disk bytes per cached token`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
