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
 * `--model standin`: the committed stand-in's head (its vocabulary's rows at d 384, as
 * float32), a job's batch of 512 tokens, rank 16, every token dense: the
 * second pass reading the first pass's kept logits (the default on so small a
 * vocabulary) against computing W z again, alternated in one process, as
 * medians of 9; and how wide the stand-in's next-token distributions are:
 * over the last layer of 4 sequences of 128 tokens of `common/` (what
 * bench:cache trains on), the rows a token needs, most probable first, to
 * hold all but 1e-3 or 1e-4 of its probability, and its rows within 18 nats of
 * its largest logit (the sparse rule's); writes headCost-standin.json.
 *
 *   npm run bench:head [-- --tokens 32,256] [-- --model standin]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { Backbone, defaultThreads, readModelTensor } from '../extension/core/model/Backbone';
import { readGgufFile } from '../extension/core/model/gguf/GgufFile';
import { describeHead, HeadDescription } from '../extension/core/model/headDescription';
import { SeededRandom } from '../common/SeededRandom';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { standInBackbone, standInRows } from './lib/standInModel';
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

/** Percentiles 0.5, 0.9 and 1 of `xs`. */
function spread(xs: number[]): { p50: number; p90: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: s[Math.floor(0.5 * (s.length - 1))]!, p90: s[Math.floor(0.9 * (s.length - 1))]!, max: s[s.length - 1]! };
}

/** The stand-in's next-token distributions on `common/`: per token, rows for all but 1e-3 / 1e-4 of the probability, and rows within 18 nats (see above). */
async function distributionWidth(model: string, head: HeadDescription): Promise<Record<string, unknown>> {
  const backbone = await Backbone.open(model, { contextSize: 1024 });
  try {
    const ws = path.join(__dirname, '..', '..', 'common');
    const text = fs.readdirSync(ws).filter((f) => f.endsWith('.ts')).sort().map((f) => fs.readFileSync(path.join(ws, f), 'utf8')).join('\n');
    const ids = backbone.tokenize(text);
    const sequences = [0, 1, 2, 3].map((k) => ids.slice(k * 128, (k + 1) * 128));
    const last = backbone.info.layers - 1;
    const y = (await backbone.capture(sequences, [last])).data[0]!;
    const W = (await readModelTensor(model, head.tensor)).data;
    const norm = (await readModelTensor(model, 'output_norm.weight')).data;
    const d = backbone.info.hiddenSize;
    const V = W.length / d;
    const need3: number[] = [];
    const need4: number[] = [];
    const within18: number[] = [];
    const logits = new Float64Array(V);
    for (let j = 0; j < y.length / d; j++) {
      let ss = 0;
      for (let i = 0; i < d; i++) ss += y[j * d + i]! ** 2;
      const inv = 1 / Math.sqrt(ss / d + head.epsilon);
      for (let v = 0; v < V; v++) {
        let l = 0;
        for (let i = 0; i < d; i++) l += W[v * d + i]! * y[j * d + i]! * inv * norm[i]!;
        logits[v] = l;
      }
      const sorted = Array.from(logits).sort((a, b) => b - a);
      let sum = 0;
      for (const l of sorted) sum += Math.exp(l - sorted[0]!);
      let acc = 0;
      let n3 = 0;
      let n4 = 0;
      for (let v = 0; v < V && n4 === 0; v++) {
        acc += Math.exp(sorted[v]! - sorted[0]!) / sum;
        if (n3 === 0 && acc >= 1 - 1e-3) n3 = v + 1;
        if (acc >= 1 - 1e-4) n4 = v + 1;
      }
      need3.push(n3 || V);
      need4.push(n4 || V);
      within18.push(sorted.filter((l) => l >= sorted[0]! - 18).length);
    }
    const out = { tokens: need3.length, vocabulary: V, rowsForAllBut1e3: spread(need3), rowsForAllBut1e4: spread(need4), rowsWithin18Nats: spread(within18) };
    console.log(`stand-in distributions over ${out.tokens} tokens of common/ (${V} rows): all but 1e-3 of the probability takes ${out.rowsForAllBut1e3.p50} rows (median; 90th percentile ${out.rowsForAllBut1e3.p90}), all but 1e-4 ${out.rowsForAllBut1e4.p50} (${out.rowsForAllBut1e4.p90}); within 18 nats of the largest logit ${out.rowsWithin18Nats.p50} (${out.rowsWithin18Nats.p90})`);
    return out;
  } finally {
    backbone.dispose();
  }
}

/** The stand-in's dense second pass with and without the first pass's kept logits, and its distributions' width (see above). */
async function keptLogits(): Promise<void> {
  const model = (await standInBackbone((line) => void process.stderr.write(`${line}\n`))).pretrained;
  // The stand-in is a llama: an RMSNorm, no soft cap, no logit multiplier (what the float64 logits below assume).
  const head = describeHead(readGgufFile(model), 'llama');
  const widths = await distributionWidth(model, head);
  const tokens = 512;
  const repeats = 9;
  const heads = await Promise.all([false, true].map((keepLogits) => DeviceHead.open(model, head, defaultThreads(), { maxCandidates: 0, keepLogits })));
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
      model: `the committed stand-in as float32 (${standInRows()} rows, d 384)`, threads: defaultThreads(), tokens, headRank: RANK, repeats,
      recomputeSeconds: recompute, keptLogitsSeconds: kept, keptOverRecompute: kept / recompute, gradientMaxDifference: diff, gradientMaxAbs: scale, distributions: widths, machine: machineDescription(),
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
