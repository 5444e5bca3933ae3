/**
 * Server training speed for a Qwen2.5-0.5B-shaped side network: 24 tapped
 * layers, d = 896, reduction 8 (r = 112), 1,024 tokens per step, the full
 * 151,936-row head, on the product's engine (onnxruntime-node, CPU provider,
 * 1 and 2 intra-op threads) and on the previous engine (TensorFlow.js wasm,
 * kept here and in the tests as the reference only); plus the side network
 * alone (a 1,024-row head) to separate the two costs, and the product's
 * default in the standard mode, with the head update of rank 16 (headRank),
 * against the same run without it. Each run is its own
 * process, so each peak RSS is its own. Also prints the exact transfer bytes
 * per token for each wire format.
 *
 *   npm run bench:server [-- --steps 2]
 */
import { spawnSync } from 'node:child_process';
import { bytesPerRow } from '../common/ActivationQuantizer';
import { ActivationBatch, batchPayloadBytes } from '../common/batchPayload';
import { decodeHalf, encodeHalf } from '../common/float16';
import { SeededRandom } from '../common/SeededRandom';
import { OnnxEngine } from '../server/training/onnx/OnnxEngine';
import { OnnxHead } from '../server/training/onnx/OnnxHead';
import { OnnxTrainer } from '../server/training/onnx/OnnxTrainer';
import { initialParameters, sideShape } from '../server/training/sideNetworkSpec';
import { FrozenHead } from '../harness/tfjs/FrozenHead';
import { SideNetwork } from '../harness/tfjs/SideNetwork';
import { initTensorflow } from '../harness/tfjs/tf';
import { Trainer } from '../harness/tfjs/Trainer';
import { machineDescription, peakRssBytes } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const L = 24;
const d = 896;
const TOKENS = 1024;
const QWEN_VOCAB = 151_936;

/** The head update's rank in the runs that have one (the standard mode's default). */
const HEAD_RANK = 16;

interface Row {
  engine: string;
  threads?: number;
  headRank?: number;
  vocab: number;
  secondsPerStep?: number;
  tokensPerSecond?: number;
  peakRssMiB?: number;
  skipped?: string;
}

function problem(vocab: number): { halves: Uint16Array; norm: Float32Array; batch: ActivationBatch } {
  const rng = new SeededRandom(3);
  const halves = new Uint16Array(vocab * d);
  const chunk = 1 << 20;
  for (let start = 0; start < halves.length; start += chunk) {
    const n = Math.min(chunk, halves.length - start);
    halves.set(encodeHalf(Float32Array.from({ length: n }, () => rng.normal() * 0.03)), start);
  }
  const norm = new Float32Array(d).fill(1);
  const layers = Array.from({ length: L }, () => Float32Array.from({ length: TOKENS * d }, () => rng.normal()));
  const batch = { rows: TOKENS, layers, targets: Int32Array.from({ length: TOKENS }, () => rng.int(vocab)), mask: new Uint8Array(TOKENS).fill(1) };
  return { halves, norm, batch };
}

async function child(engineName: string, vocab: number, threads: number, steps: number, headRank: number): Promise<void> {
  const { halves, norm, batch } = problem(vocab);
  const shape = sideShape(d, 8, Array.from({ length: L }, (_, i) => i), 1, false, headRank > 0 ? { rank: headRank, vocab } : undefined);
  const options = { learningRate: 1e-3, warmupSteps: 1, totalSteps: steps + 1 };
  let step: () => Promise<unknown>;
  if (engineName === 'onnxruntime-cpu') {
    const engine = await OnnxEngine.create({ threads });
    const trainer = new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, 1e-6), initialParameters(shape, 1), options);
    step = () => trainer.trainBatch(batch);
  } else {
    const backend = await initTensorflow();
    if (backend !== 'wasm') throw new Error(`expected the wasm backend, got ${backend}`);
    const trainer = new Trainer(new SideNetwork(shape, initialParameters(shape, 1)), new FrozenHead(decodeHalf(halves), norm, 1e-6), options);
    step = async () => trainer.trainBatch(batch);
  }
  await step(); // warm-up (graph optimisation, wasm compilation)
  const t0 = process.hrtime.bigint();
  for (let s = 0; s < steps; s++) await step();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9 / steps;
  const row: Row = { engine: engineName, threads, ...(headRank > 0 ? { headRank } : {}), vocab, secondsPerStep: seconds, tokensPerSecond: TOKENS / seconds, peakRssMiB: Math.round(peakRssBytes() / 2 ** 20) };
  process.stdout.write(`${JSON.stringify(row)}\n`);
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const steps = Number(arg('steps', '2'));
  if (process.argv.includes('--child')) return child(arg('engine', ''), Number(arg('vocab', '1024')), Number(arg('threads', '1')), steps, Number(arg('head-rank', '0')));
  const runs: { engine: string; threads: number; headRank?: number }[] = [
    { engine: 'onnxruntime-cpu', threads: 1 },
    { engine: 'onnxruntime-cpu', threads: 2 },
    { engine: 'onnxruntime-cpu', threads: 2, headRank: HEAD_RANK },
    { engine: 'tfjs-wasm', threads: 1 },
  ];
  const rows: Row[] = [];
  for (const vocab of [1024, QWEN_VOCAB]) {
    for (const { engine, threads, headRank = 0 } of runs) {
      const args = ['--child', '--engine', engine, '--vocab', String(vocab), '--threads', String(threads), '--steps', String(steps), '--head-rank', String(headRank)];
      const r = spawnSync(process.execPath, [__filename, ...args], { encoding: 'utf8', env: { ...process.env, MOBILLM_TF_BACKEND: 'wasm' }, maxBuffer: 1 << 24 });
      const line = r.stdout.trim().split('\n').pop() ?? '';
      if (r.status !== 0 || !line.startsWith('{')) {
        rows.push({ engine, threads, ...(headRank ? { headRank } : {}), vocab, skipped: `failed here (${(r.stderr.split('\n').find((l) => l.includes('Error')) ?? 'no output').slice(0, 160)})` });
        process.stderr.write(`${engine} x${threads} vocab ${vocab}: failed\n${r.stderr.slice(-2000)}\n`);
        continue;
      }
      const row = JSON.parse(line) as Row;
      rows.push(row);
      process.stderr.write(`${engine} x${threads}${headRank ? ` head rank ${headRank}` : ''} vocab ${vocab}: ${row.tokensPerSecond!.toFixed(0)} tokens/s (${row.secondsPerStep!.toFixed(2)} s/step, peak RSS ${row.peakRssMiB} MiB)\n`);
    }
  }
  const full = (engine: string, threads: number, headRank?: number): number | undefined =>
    rows.find((r) => r.engine === engine && r.threads === threads && r.headRank === headRank && r.vocab === QWEN_VOCAB)?.tokensPerSecond;
  const plain2 = full('onnxruntime-cpu', 2);
  const head2 = full('onnxruntime-cpu', 2, HEAD_RANK);
  const wasm = full('tfjs-wasm', 1);
  const speedup = (threads: number): number | undefined => (wasm && full('onnxruntime-cpu', threads) ? full('onnxruntime-cpu', threads)! / wasm : undefined);
  const tokensPerSecond = Object.fromEntries(rows.filter((r) => r.tokensPerSecond).map((r) => [`${r.engine}/threads${r.threads}${r.headRank ? `/headRank${r.headRank}` : ''}/vocab${r.vocab}`, Math.round(r.tokensPerSecond!)]));
  const wire = Object.fromEntries(([16, 8, 4] as const).map((b) => [`bits${b}`, { bytesPerTokenPerLayer: bytesPerRow(d, b), bytesPerTokenAllLayers: batchPayloadBytes(1, L, d, b) }]));
  const result = {
    shape: { layers: L, d, r: d / 8, vocabulary: QWEN_VOCAB, tokensPerStep: TOKENS },
    tokensPerSecond,
    speedupVsTfjsWasm: speedup(2),
    speedupVsTfjsWasmOneThread: speedup(1),
    /** Tokens per second with the head update of rank 16 over without it (2 threads, the full head): the standard mode's cost of it. */
    headUpdateOverPlain: plain2 && head2 ? head2 / plain2 : undefined,
    goals: { twoThreads: 8, oneThread: 4, peakRssMiB: 1536 },
    rows,
    wire: { ...wire, f32BytesPerTokenAllLayers: L * d * 4 + 5 },
    machine: machineDescription(),
  };
  writeResult('server-training.json', result);
  console.log('| engine | threads | head update | head rows | tokens/s | s/step | peak RSS |');
  console.log('|---|---|---|---|---|---|---|');
  for (const x of rows) {
    console.log(`| ${x.engine} | ${x.threads} | ${x.headRank ? `rank ${x.headRank}` : 'none'} | ${x.vocab} | ${x.tokensPerSecond ? x.tokensPerSecond.toFixed(0) : `skipped: ${x.skipped}`} | ${x.secondsPerStep?.toFixed(2) ?? ''} | ${x.peakRssMiB ?? ''} MiB |`);
  }
  if (plain2 && head2) console.log(`the head update of rank ${HEAD_RANK}, full head, 2 threads: ${(head2 / plain2).toFixed(2)}x the tokens/s without it`);
  console.log(`speed-up of onnxruntime-cpu over tfjs-wasm with the full head: ${speedup(2)?.toFixed(1)}x (2 threads), ${speedup(1)?.toFixed(1)}x (1 thread)`);
  for (const [k, v] of Object.entries(wire)) console.log(`| ${k} | ${v.bytesPerTokenPerLayer} B/token/layer | ${v.bytesPerTokenAllLayers} B/token (24 layers + target + mask) |`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
