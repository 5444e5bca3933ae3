/**
 * The server's per-job memory estimate (server/training/jobMemory.ts) against
 * what a job really takes: each shape runs in its own child process, which
 * starts the training engine, measures its RSS, loads one job (fresh
 * weights) and trains two steps; the peak RSS above the engine's is the
 * job's. Label-private jobs, and one standard-mode job with the head update
 * (the embedded server's default): its model head (shared by every job of
 * the model, not the job's) is loaded before the baseline, by a small job of
 * the same model. Reports estimate / measured per shape (at least 1: the budget
 * refuses before it runs out).
 *
 *   npm run bench:job-memory [-- --quick]
 */
import { joinBits } from '../common/ActivationQuantizer';
import { encodeBatchPayload, encodeLayersPayload } from '../common/batchPayload';
import { jobShape } from '../common/AdapterConfig';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { JobConfig, ModelSpec } from '../common/messages';
import { SeededRandom } from '../common/SeededRandom';
import { JobRegistry } from '../server/JobRegistry';
import { DEFAULT_SESSION_LIMITS } from '../server/SessionLimits';
import { HeadStore } from '../server/storage/file/HeadStore';
import { JobStore } from '../server/storage/file/JobStore';
import { jobMemoryBytes } from '../server/training/jobMemory';
import { OnnxEngine } from '../server/training/onnx/OnnxEngine';
import { BENCH_CACHE, machineDescription, peakRssBytes } from './lib/benchModels';
import { writeResult } from './lib/writeResult';
import { LocalTrainers } from '../server/training/LocalTrainers';

interface Shape {
  name: string;
  layers: number;
  hiddenSize: number;
  extra: Partial<JobConfig>;
}

const SHAPES: Shape[] = [
  { name: 'Qwen2.5-0.5B shape, side network 1', layers: 24, hiddenSize: 896, extra: {} },
  { name: 'Qwen2.5-0.5B shape, side network 2', layers: 24, hiddenSize: 896, extra: { sideNetwork: 2 } },
  { name: 'Qwen2.5-0.5B shape, side network 2, standard mode, head update rank 16', layers: 24, hiddenSize: 896, extra: { sideNetwork: 2, labelPrivate: false, headRank: 16 } },
  { name: 'Qwen2.5-7B shape (28 x 3584), side network 1', layers: 28, hiddenSize: 3584, extra: {} },
];

function configOf(s: Shape): { config: JobConfig; model: ModelSpec } {
  const config: JobConfig = {
    tappedLayers: [...Array(s.layers).keys()], reduction: 8, bits: 8, seqLen: 128, batchSize: 4, totalSteps: 10, learningRate: 1e-3,
    warmupSteps: 1, seed: 1, checkpointEvery: 100, labelPrivate: true, ...s.extra,
  };
  const model: ModelSpec = { fingerprint: 'b'.repeat(64), architecture: 'qwen2', layers: s.layers, hiddenSize: s.hiddenSize, vocabularySize: 151_936, normEpsilon: 1e-6, headDigest: 'c'.repeat(64) };
  return { config, model };
}

/** In the child: the job's peak RSS above the started engine's. */
async function measure(s: Shape): Promise<void> {
  const engine = await OnnxEngine.create({ threads: 1 });
  const dir = fs.mkdtempSync(path.join(BENCH_CACHE, 'job-memory-'));
  try {
    const jobs = new JobStore(dir);
    const heads = new HeadStore(dir);
    const registry = new JobRegistry(new LocalTrainers(engine), jobs, heads);
    const { config, model } = configOf(s);
    const limits = { ...DEFAULT_SESSION_LIMITS, maxJobMemoryBytes: 2 ** 40, maxUserMemoryBytes: 2 ** 40 };
    if (!config.labelPrivate) {
      // The model's head (small values, f16), loaded and shared by a one-layer job of the same model before the baseline.
      await heads.save(model, model.vocabularySize, model.hiddenSize, new Float32Array(model.hiddenSize).fill(1), new Uint16Array(model.vocabularySize * model.hiddenSize).fill(0x2000));
      await registry.load(await jobs.create('bench', 'head', model, { ...config, tappedLayers: [model.layers - 1], reduction: 128, sideNetwork: undefined, headRank: undefined }), limits);
    }
    // The peak so far (the head's file written and read) is not the job's: Linux resets it to the current RSS.
    if (!config.labelPrivate) fs.writeFileSync('/proc/self/clear_refs', '5');
    const baseline = process.memoryUsage().rss;
    const job = await registry.load(await jobs.create('bench', 'm', model, config), limits);
    const rows = config.seqLen * config.batchSize;
    const rng = new SeededRandom(1);
    const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * model.hiddenSize }, () => rng.normal()));
    const lengths = Array.from({ length: config.batchSize }, () => config.seqLen);
    for (let i = 0; i < 2; i++) {
      if (!config.labelPrivate) {
        const targets = Int32Array.from({ length: rows }, () => rng.int(model.vocabularySize));
        await job.train(i, { payload: encodeBatchPayload({ rows, layers, targets, mask: new Uint8Array(rows).fill(1) }, model.hiddenSize, config.bits), rows, lengths });
        continue;
      }
      await job.sideOutput(i, { payload: encodeLayersPayload(layers, rows, model.hiddenSize, config.bits), rows, lengths });
      const dy = Float32Array.from({ length: rows * model.hiddenSize }, () => rng.normal() * 1e-3);
      await job.applyGradient(i, rows, encodeLayersPayload([dy], rows, model.hiddenSize, joinBits(config.bits)), rows, rows);
    }
    process.stdout.write(`${JSON.stringify({ measured: peakRssBytes() - baseline })}\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    await engine.dispose();
  }
}

function main(): void {
  const quick = process.argv.includes('--quick');
  const results = [];
  for (const s of quick ? SHAPES.slice(0, 2) : SHAPES) {
    const r = spawnSync(process.execPath, [__filename, '--child', s.name], { encoding: 'utf8', maxBuffer: 1 << 20 });
    if (r.status !== 0) throw new Error(`${s.name}: ${r.stderr.slice(-2000)}`);
    const { measured } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { measured: number };
    const { config, model } = configOf(s);
    const estimate = jobMemoryBytes(config, jobShape(config, model));
    results.push({ shape: s.name, estimateGiB: +(estimate / 2 ** 30).toFixed(3), measuredGiB: +(measured / 2 ** 30).toFixed(3), estimateOverMeasured: +(estimate / measured).toFixed(2) });
    process.stdout.write(`${s.name}: estimate ${(estimate / 2 ** 30).toFixed(2)} GiB, measured ${(measured / 2 ** 30).toFixed(2)} GiB (${(estimate / measured).toFixed(2)}x)\n`);
  }
  const out = writeResult('jobMemory.json', { machine: machineDescription(), results });
  process.stdout.write(`wrote ${path.relative(process.cwd(), out)}\n`);
}

if (process.argv[2] === '--child') {
  const shape = SHAPES.find((s) => s.name === process.argv[3])!;
  measure(shape).catch((err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  });
} else {
  main();
}
