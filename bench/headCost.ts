/**
 * The label-private head's own cost on the device (native HeadLoss), on the
 * Qwen2.5-0.5B-shaped Q8_0 model (151,936 rows at d 896): for a batch of
 * tokens, the loss alone (one pass over the vocabulary) against the loss and
 * the gradient with every token on the dense path (maxCandidates 0), with
 * the head update of rank 16 (the default: a second pass for B's gradient)
 * and without it (one pass that also takes W^T p), as medians of 3 runs in
 * one process. The dense path is what wide next-token distributions take
 * (45% of a label-private job's tokens on this random-weight model: cache.json).
 *
 *   npm run bench:head [-- --tokens 32,256]
 */
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { defaultThreads } from '../extension/core/model/Backbone';
import { SeededRandom } from '../common/SeededRandom';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const REPEATS = 3;
const RANK = 16;

async function seconds(run: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const t0 = process.hrtime.bigint();
    await run();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return median(times);
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--tokens');
  const sizes = (at >= 0 ? process.argv[at + 1]! : '32,256').split(',').map(Number);
  const model = qwenShapedModel('q8_0');
  const head = await DeviceHead.open(model, 1e-6, defaultThreads(), { maxCandidates: 0 });
  const rows: Record<string, unknown>[] = [];
  try {
    const d = head.hiddenSize;
    const V = head.vocabularySize;
    const rng = new SeededRandom(7);
    for (const rank of [0, RANK]) {
      await head.setHeadUpdate(rank, rank > 0 ? Float32Array.from({ length: d * rank }, () => rng.normal() * 0.05) : undefined, rank > 0 ? Float32Array.from({ length: V * rank }, () => rng.normal() * 0.01) : undefined);
      for (const n of sizes) {
        const y = Float32Array.from({ length: n * d }, () => rng.normal());
        const targets = Int32Array.from({ length: n }, () => rng.int(V));
        const weights = new Float32Array(n).fill(1 / n);
        const loss = await seconds(() => head.losses(y, targets));
        const gradient = await seconds(() => head.lossAndGradient(y, targets, weights));
        rows.push({ headRank: rank, tokens: n, lossSeconds: loss, denseGradientSeconds: gradient, denseOverLoss: gradient / loss });
        console.log(`rank ${rank}, ${n} tokens: loss ${loss.toFixed(3)} s, loss and gradient (every token dense) ${gradient.toFixed(3)} s: ${(gradient / loss).toFixed(2)}x`);
      }
    }
  } finally {
    head.dispose();
  }
  writeResult('headCost.json', { model: 'qwen2.5-0.5b-shape-q8_0.gguf (151,936 rows, d 896, random weights)', threads: defaultThreads(), repeats: REPEATS, runs: rows, machine: machineDescription() });
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
