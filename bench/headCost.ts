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
 * `--model standin`: the committed stand-in's head (8,192 rows at d 384, as
 * float32), a job's batch of 512 tokens, rank 16, every token dense: the
 * second pass reading the first pass's kept logits (the default on so small a
 * vocabulary) against computing W z again, alternated in one process, as
 * medians of 9; writes headCost-standin.json.
 *
 *   npm run bench:head [-- --tokens 32,256] [-- --model standin]
 */
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { defaultThreads } from '../extension/core/model/Backbone';
import { SeededRandom } from '../common/SeededRandom';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { standInBackbone } from './lib/standInModel';
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

/** The stand-in's dense second pass with and without the first pass's kept logits (see above). */
async function keptLogits(): Promise<void> {
  const model = (await standInBackbone((line) => void process.stderr.write(`${line}\n`))).pretrained;
  const tokens = 512;
  const repeats = 9;
  const heads = await Promise.all([false, true].map((keepLogits) => DeviceHead.open(model, 1e-5, defaultThreads(), { maxCandidates: 0, keepLogits })));
  try {
    const d = heads[0]!.hiddenSize;
    const V = heads[0]!.vocabularySize;
    const rng = new SeededRandom(7);
    const a = Float32Array.from({ length: d * RANK }, () => rng.normal() * 0.05);
    const b = Float32Array.from({ length: V * RANK }, () => rng.normal() * 0.01);
    for (const h of heads) await h.setHeadUpdate(RANK, a, b);
    const y = Float32Array.from({ length: tokens * d }, () => rng.normal());
    const targets = Int32Array.from({ length: tokens }, () => rng.int(V));
    const weights = new Float32Array(tokens).fill(1 / tokens);
    const times: [number[], number[]] = [[], []];
    const grads: Float32Array[] = [];
    for (let i = 0; i < repeats; i++) {
      for (const k of [0, 1]) {
        const t0 = process.hrtime.bigint();
        const r = await heads[k]!.lossAndGradient(y, targets, weights);
        times[k]!.push(Number(process.hrtime.bigint() - t0) / 1e9);
        grads[k] = r.grad;
      }
    }
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < grads[0]!.length; i++) {
      diff = Math.max(diff, Math.abs(grads[0]![i]! - grads[1]![i]!));
      scale = Math.max(scale, Math.abs(grads[0]![i]!));
    }
    const [recompute, kept] = times.map(median) as [number, number];
    console.log(`stand-in head, ${tokens} tokens, rank ${RANK}, every token dense: W z again ${recompute.toFixed(3)} s, kept logits ${kept.toFixed(3)} s: ${(kept / recompute).toFixed(3)}x; gradients differ by at most ${diff.toExponential(2)} (largest ${scale.toExponential(2)})`);
    writeResult('headCost-standin.json', {
      model: 'the committed stand-in as float32 (8,192 rows, d 384)', threads: defaultThreads(), tokens, headRank: RANK, repeats,
      recomputeSeconds: recompute, keptLogitsSeconds: kept, keptOverRecompute: kept / recompute, gradientMaxDifference: diff, gradientMaxAbs: scale, machine: machineDescription(),
    });
  } finally {
    for (const h of heads) h.dispose();
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--model') && process.argv[process.argv.indexOf('--model') + 1] === 'standin') return keptLogits();
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
