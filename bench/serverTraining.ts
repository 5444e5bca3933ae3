/**
 * Server training speed for a Qwen2.5-0.5B-shaped side network: L = 24 tapped
 * layers, d = 896, reduction 8 (r = 112), B x T = 1024 tokens, the full
 * 151,936-row head (chunked), on each TensorFlow.js backend that loads here,
 * plus the side network alone (a 1,024-row head) to separate the two costs.
 * Also prints the exact transfer bytes per token for each wire format.
 *
 *   npm run bench:server [-- --steps 2]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SeededRandom } from '../common/SeededRandom';
import { bytesPerRow } from '../common/ActivationQuantizer';
import { batchPayloadBytes } from '../common/batchPayload';
import { FrozenHead } from '../server/training/FrozenHead';
import { initialParameters, SideNetwork, sideShape } from '../server/training/SideNetwork';
import { Trainer } from '../server/training/Trainer';
import { initTensorflow, tf } from '../server/training/tf';
import { machineDescription } from './benchModels';

const L = 24;
const d = 896;
const TOKENS = 1024;
const QWEN_VOCAB = 151_936;

async function child(vocab: number, steps: number): Promise<void> {
  const backend = await initTensorflow();
  const rng = new SeededRandom(3);
  const head = new Float32Array(vocab * d);
  for (let i = 0; i < head.length; i++) head[i] = rng.normal() * 0.03;
  const norm = new Float32Array(d).fill(1);
  const shape = sideShape(d, 8, Array.from({ length: L }, (_, i) => i));
  const net = new SideNetwork(shape, initialParameters(shape, 1));
  const fh = new FrozenHead(head, norm, 1e-6);
  const trainer = new Trainer(net, fh, { learningRate: 1e-3, warmupSteps: 1, totalSteps: steps + 1 });
  const layers = Array.from({ length: L }, () => Float32Array.from({ length: TOKENS * d }, () => rng.normal()));
  const batch = { rows: TOKENS, layers, targets: Int32Array.from({ length: TOKENS }, () => rng.int(vocab)), mask: new Uint8Array(TOKENS).fill(1) };
  trainer.trainBatch(batch); // warm-up
  const t0 = process.hrtime.bigint();
  for (let s = 0; s < steps; s++) trainer.trainBatch(batch);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9 / steps;
  process.stdout.write(`${JSON.stringify({ backend, vocab, secondsPerStep: seconds, tokensPerSecond: TOKENS / seconds, tensors: tf.memory().numTensors })}\n`);
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const steps = Number(arg('steps', '2'));
  if (process.argv.includes('--child')) return child(Number(arg('vocab', '1024')), steps);
  const rows: Record<string, unknown>[] = [];
  for (const backend of ['tensorflow', 'wasm', 'cpu']) {
    for (const vocab of [1024, QWEN_VOCAB]) {
      if (backend === 'cpu' && vocab === QWEN_VOCAB) {
        rows.push({ backend, vocab, skipped: 'the pure-JS backend would take tens of minutes per step with the full head' });
        continue;
      }
      const r = spawnSync(process.execPath, [__filename, '--child', '--vocab', String(vocab), '--steps', String(steps)], { encoding: 'utf8', env: { ...process.env, MOBILLM_TF_BACKEND: backend }, maxBuffer: 1 << 24 });
      const line = r.stdout.trim().split('\n').pop() ?? '';
      if (r.status !== 0 || !line.startsWith('{')) {
        rows.push({ backend, vocab, skipped: `backend not available here (${(r.stderr.split('\n').find((l) => l.includes('Error')) ?? 'failed').slice(0, 120)})` });
        process.stderr.write(`${backend} vocab ${vocab}: not available\n`);
        continue;
      }
      const res = JSON.parse(line);
      rows.push(res);
      process.stderr.write(`${backend} vocab ${vocab}: ${res.tokensPerSecond.toFixed(0)} tokens/s (${res.secondsPerStep.toFixed(2)} s/step)\n`);
    }
  }
  const wire = Object.fromEntries(([16, 8, 4] as const).map((b) => [`bits${b}`, { bytesPerTokenPerLayer: bytesPerRow(d, b), bytesPerTokenAllLayers: batchPayloadBytes(1, L, d, b) }]));
  const result = { shape: { layers: L, d, r: d / 8, tokensPerStep: TOKENS }, rows, wire: { ...wire, f32BytesPerTokenAllLayers: L * d * 4 + 5 }, machine: machineDescription() };
  const out = path.resolve(__dirname, '..', '..', 'bench', 'results', 'server-training.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  for (const r of rows) {
    const x = r as { backend: string; vocab: number; tokensPerSecond?: number; secondsPerStep?: number; skipped?: string };
    console.log(`| ${x.backend} | head ${x.vocab} rows | ${x.tokensPerSecond ? `${x.tokensPerSecond.toFixed(0)} tokens/s (${x.secondsPerStep!.toFixed(2)} s/step)` : `skipped: ${x.skipped}`} |`);
  }
  for (const [k, v] of Object.entries(wire)) console.log(`| ${k} | ${v.bytesPerTokenPerLayer} B/token/layer | ${v.bytesPerTokenAllLayers} B/token (24 layers + target + mask) |`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
