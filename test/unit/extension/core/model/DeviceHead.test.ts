import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readModelTensor } from '../../../../../extension/core/model/Backbone';
import { DeviceHead } from '../../../../../extension/core/model/DeviceHead';
import { describeHead } from '../../../../../extension/core/model/headDescription';
import { readGgufFile } from '../../../../../extension/core/model/gguf/GgufFile';
import type { HeadTuning } from '../../../../../extension/native/NativeAddon';
import { SeededRandom } from '../../../../../common/SeededRandom';
import { tinyModel, VOCAB_DIR } from '../../../../helpers/models';
import { tmpDir } from '../../../../helpers/workspaces';

/** z as ggml's matrix product with a Q8_0 matrix sees it: rounded to 8 bits per block of 32, one scale per block (as llama.cpp's own head does). */
function q8Rounded(z: number[]): number[] {
  const out = [...z];
  for (let b = 0; b < z.length; b += 32) {
    const amax = Math.max(...z.slice(b, b + 32).map(Math.abs));
    const scale = Math.fround(amax / 127);
    for (let i = b; i < b + 32; i++) out[i] = scale === 0 ? 0 : Math.round(z[i]! / scale) * scale;
  }
  return out;
}

/**
 * float64 reference: loss_j = logsumexp(W z_j) - (W z_j)[t_j], z = rmsnorm(y) * norm (with `roundZ`, as the
 * matrix product sees z); and d(sum w_j loss_j)/dy.
 */
function reference(
  W: Float32Array, norm: Float32Array, eps: number, d: number, y: Float32Array, targets: Int32Array, weights: Float32Array,
  roundZ = (z: number[]) => z, tailNats = Infinity,
) {
  const V = W.length / d;
  const n = targets.length;
  const losses = new Float64Array(n);
  const top: number[] = [];
  const grad = new Float64Array(n * d);
  for (let j = 0; j < n; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += y[j * d + i]! ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    const xhat = Array.from({ length: d }, (_, i) => y[j * d + i]! * inv);
    const z = roundZ(xhat.map((x, i) => x * norm[i]!));
    const logits = new Float64Array(V);
    for (let v = 0; v < V; v++) for (let i = 0; i < d; i++) logits[v] += W[v * d + i]! * z[i]!;
    const m = logits.reduce((a, b) => Math.max(a, b), -Infinity);
    top.push(logits.indexOf(m));
    let s = 0;
    for (const l of logits) s += Math.exp(l - m);
    losses[j] = m + Math.log(s) - logits[targets[j]!]!;
    // With `tailNats`, the rows below the largest logit minus tailNats are left out and their probability goes to the mean row.
    const dz = new Float64Array(d);
    let kept = 0;
    for (let v = 0; v < V; v++) {
      const pv = Math.exp(logits[v]! - m) / s;
      const p = (logits[v]! >= m - tailNats ? pv : 0) - (v === targets[j] ? 1 : 0);
      if (logits[v]! >= m - tailNats) kept += pv;
      for (let i = 0; i < d; i++) dz[i] += p * W[v * d + i]!;
    }
    for (let v = 0; v < V; v++) for (let i = 0; i < d; i++) dz[i] += ((1 - kept) / V) * W[v * d + i]!;
    const dn = Array.from({ length: d }, (_, i) => weights[j]! * dz[i]! * norm[i]!);
    const mean = dn.reduce((a, x, i) => a + x * xhat[i]!, 0) / d;
    for (let i = 0; i < d; i++) grad[j * d + i] = inv * (dn[i]! - xhat[i]! * mean);
  }
  return { losses, top, grad };
}

describe('DeviceHead (the model\'s own head on the device)', function () {
  this.timeout(120_000);
  const eps = 1e-5;

  const cases = [
    ['f32, own head', { type: 'f32' as const }, undefined, undefined],
    ['Q8_0, tied to the embedding', { type: 'q8_0' as const, untiedHead: false }, undefined, undefined],
    ['Q8_0, every token sparse', { type: 'q8_0' as const }, { tailMass: 1, maxCandidates: 1 << 20 }, 'none'],
    ['Q8_0, every token dense', { type: 'q8_0' as const }, { maxCandidates: 0 }, 'all'],
    ['Q8_0, sparse rows within 0.5 nats, the rest as the mean row', { type: 'q8_0' as const }, { tailMass: 1, tailNats: 0.5, maxCandidates: 1 << 20 }, 'none'],
    // 151,936 rows at d = 64: the dense product's W_c^T comes in two chunks, the second padded to 32 rows, tiles on two threads.
    ['Q8_0, every token dense, Qwen2\'s vocabulary, two threads', { type: 'q8_0' as const, vocab: path.join(VOCAB_DIR, 'ggml-vocab-qwen2.gguf') }, { maxCandidates: 0 }, 'all', 2],
    // 151,936 rows of 68 bytes: the sparse rows and the targets are read over two spans of the mapping (HeadWeights::spanRows), on two threads.
    ['Q8_0, every token sparse, Qwen2\'s vocabulary, two threads', { type: 'q8_0' as const, vocab: path.join(VOCAB_DIR, 'ggml-vocab-qwen2.gguf') }, { tailMass: 1, maxCandidates: 1 << 20 }, 'none', 2],
  ] as const;
  for (const [label, options, tuning, dense, threads] of cases as readonly (readonly [string, (typeof cases)[number][1], HeadTuning | undefined, 'all' | 'none' | undefined, number?])[]) {
    it(`computes each token's loss and the gradient wrt the hidden state as a float64 reference does (${label})`, async () => {
      const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 11, ...options });
      const head = await DeviceHead.open(model, eps, threads ?? 1, tuning);
      try {
        assert.equal(head.mapped, true, 'the head is read through the file mapping');
        const d = head.hiddenSize;
        const W = (await readModelTensor(model, 'untiedHead' in options ? 'token_embd.weight' : 'output.weight')).data;
        const norm = (await readModelTensor(model, 'output_norm.weight')).data;
        const rng = new SeededRandom(3);
        const n = 5;
        const y = Float32Array.from({ length: n * d }, () => rng.normal() * 2);
        const targets = Int32Array.from({ length: n }, (_, j) => (j * 40_009 + 5) % head.vocabularySize); // spread over the vocabulary, out of order
        const weights = Float32Array.from([0.25, 0, 0.25, 0.25, 0.25]);
        const got = await head.lossAndGradient(y, targets, weights);
        if (dense !== undefined) assert.equal(head.counts.denseTokens, dense === 'all' ? n : 0, 'tokens that took the dense product');
        const want = reference(W, norm, eps, d, y, targets, weights, options.type === 'q8_0' ? q8Rounded : undefined, tuning?.tailNats);
        for (let j = 0; j < n; j++) assert.ok(Math.abs(got.losses[j]! - want.losses[j]!) < 2e-3 * Math.max(1, want.losses[j]!), `loss ${j}: ${got.losses[j]} vs ${want.losses[j]}`);
        let maxErr = 0;
        let maxRef = 0;
        for (let i = 0; i < n * d; i++) {
          maxErr = Math.max(maxErr, Math.abs(got.grad[i]! - want.grad[i]!));
          maxRef = Math.max(maxRef, Math.abs(want.grad[i]!));
        }
        // Sparse tokens' products run in f32 from the file's rows (only ggml's rounding of z for the logits remains);
        // dense ones in 8 bits (a transposed Q8_0 chunk; softmax rounded per 32 entries).
        const tolerance = dense === 'none' ? 1e-3 : 5e-3;
        assert.ok(maxErr < tolerance * maxRef, `gradient off by ${maxErr} (largest ${maxRef})`);
        for (let i = d; i < 2 * d; i++) assert.equal(Math.abs(got.grad[i]!), 0, 'a token with weight 0 has no gradient');
        assert.deepEqual(Array.from(await head.losses(y, targets)), Array.from(got.losses));
        // A call after one whose tokens were mostly dense takes every token's product in the first pass: the same gradient.
        const again = await head.lossAndGradient(y, targets, weights);
        for (let i = 0; i < n * d; i++) assert.ok(Math.abs(again.grad[i]! - got.grad[i]!) <= 5e-3 * maxRef, `second call, component ${i}`);
        assert.deepEqual(Array.from((await head.guesses(y, targets)).top), want.top, 'each token\'s highest-scoring id');
      } finally {
        head.dispose();
      }
    });
  }

  it('agrees with finite differences of its own loss', async () => {
    const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 12 });
    const head = await DeviceHead.open(model, eps, 1);
    try {
      const d = head.hiddenSize;
      const rng = new SeededRandom(9);
      const y = Float32Array.from({ length: d }, () => rng.normal());
      const t = Int32Array.of(42);
      const { grad } = await head.lossAndGradient(y, t, Float32Array.of(1));
      for (const i of [0, 7, 33, 63]) {
        const h = 1e-2;
        const up = Float32Array.from(y);
        const down = Float32Array.from(y);
        up[i]! += h;
        down[i]! -= h;
        const fd = ((await head.losses(up, t))[0]! - (await head.losses(down, t))[0]!) / (2 * h);
        assert.ok(Math.abs(fd - grad[i]!) < 2e-3 + 0.02 * Math.abs(fd), `component ${i}: ${grad[i]} vs ${fd}`);
      }
    } finally {
      head.dispose();
    }
  });

  for (const architecture of ['llama', 'gemma2', 'starcoder2'] as const) {
  it(`with a head update: its gradients (read from Adam\'s first moment after one step) and the one at y agree with finite differences, on the sparse and the dense path alike, the dense path's second pass reading the first pass's logits or computing them again (${{ llama: 'llama', gemma2: 'gemma2: logits soft-capped at 3', starcoder2: 'starcoder2: a LayerNorm with a bias' }[architecture]})`, async () => {
    const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 12, architecture });
    const description = architecture === 'llama' ? eps : describeHead(readGgufFile(model), architecture);
    const rank = 3;
    const n = 3;
    const rng = new SeededRandom(21);
    let y = new Float32Array(0);
    const targets = Int32Array.of(42, 7, 300);
    const weights = Float32Array.of(0.5, 0.25, 0.25);
    const results: { grad: Float32Array; ga: Float32Array; gb: Float32Array }[] = [];
    // All rows kept (sparse, nothing left out), then every token dense (the logits kept between the passes, then not).
    for (const tuning of [{ maxCandidates: 100_000, tailNats: 1e9 }, { maxCandidates: 0 }, { maxCandidates: 0, keepLogits: false }] satisfies HeadTuning[]) {
      const head = await DeviceHead.open(model, description, 1, tuning);
      try {
        const d = head.hiddenSize;
        const V = head.vocabularySize;
        if (y.length === 0) y = Float32Array.from({ length: n * d }, () => rng.normal());
        const a = Float32Array.from({ length: d * rank }, (_, i) => Math.sin(i) * 0.3);
        const b = Float32Array.from({ length: V * rank }, (_, i) => Math.cos(i * 0.7) * 0.5);
        const weighted = async (): Promise<number> => (await head.losses(y, targets)).reduce((s, l, j) => s + weights[j]! * l, 0);
        await head.setHeadUpdate(rank, a, b);
        const base = await weighted();
        const { grad } = await head.lossAndGradient(y, targets, weights);
        // lr 0 and no clipping: after one step from zero moments, m = (1 - beta1) g.
        const r = await head.stepHeadUpdate({ learningRate: 0, t: 1, clipNorm: 1e30, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 });
        assert.ok(r.stepped && r.gradNorm > 0);
        const st = await head.exportHeadUpdate(true);
        const ga = st.ma!.map((m) => m / 0.1);
        const gb = st.mb!.map((m) => m / 0.1);
        assert.deepEqual(Array.from(st.a), Array.from(a), 'learning rate 0 leaves A as it was');
        const h = 2e-2;
        const check = async (which: 'a' | 'b', i: number, want: number): Promise<void> => {
          const up = Float32Array.from(which === 'a' ? a : b);
          const down = Float32Array.from(up);
          up[i]! += h;
          down[i]! -= h;
          await head.setHeadUpdate(rank, which === 'a' ? up : a, which === 'b' ? up : b);
          const lu = await weighted();
          await head.setHeadUpdate(rank, which === 'a' ? down : a, which === 'b' ? down : b);
          const fd = (lu - (await weighted())) / (2 * h);
          assert.ok(Math.abs(fd - want) < 2e-3 + 0.03 * Math.abs(fd), `d/d${which}[${i}]: ${want} vs ${fd}`);
        };
        for (const i of [0, 5, 100, d * rank - 1]) await check('a', i, ga[i]!);
        for (const i of [1, 40, d + 3, 2 * d + 60]) {
          const at = async (dx: number): Promise<number> => {
            const moved = Float32Array.from(y);
            moved[i]! += dx;
            return (await head.losses(moved, targets)).reduce((s2, l, j) => s2 + weights[j]! * l, 0);
          };
          const fd = ((await at(h)) - (await at(-h))) / (2 * h);
          assert.ok(Math.abs(fd - grad[i]!) < 2e-3 + 0.03 * Math.abs(fd), `d/dy[${i}]: ${grad[i]} vs ${fd}`);
        }
        for (const v of [42, 7, 300, 0, 999]) for (const c of [0, rank - 1]) await check('b', v * rank + c, gb[v * rank + c]!);
        await head.setHeadUpdate(rank, a, b);
        assert.equal(await weighted(), base);
        results.push({ grad, ga, gb });
      } finally {
        head.dispose();
      }
    }
    const [sparse, dense, again] = results as [typeof results[0], typeof results[0], typeof results[0]];
    const close = (x: Float32Array, z: Float32Array, what: string): void => {
      const scale = Math.max(...Array.from(z, Math.abs));
      for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i]! - z[i]!) <= 5e-3 * scale, `${what}[${i}]: sparse ${x[i]} vs dense ${z[i]}`);
    };
    close(sparse.grad, dense.grad, 'dy');
    close(sparse.ga, dense.ga, 'dA');
    close(sparse.gb, dense.gb, 'dB');
    // The same logits either way: the same floats.
    assert.deepEqual([again.grad, again.ga, again.gb].map((x) => Array.from(x)), [dense.grad, dense.ga, dense.gb].map((x) => Array.from(x)));
  });
  }

  it('saves the head update with its moments and reads it back in another head; another job, step or a damaged byte is refused', async () => {
    const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 12 });
    const [one, two] = [await DeviceHead.open(model, eps, 1), await DeviceHead.open(model, eps, 1)];
    const file = path.join(tmpDir('head-snap'), 'step-3.bin');
    const job = '01234567-89ab-cdef-0123-456789abcdef';
    try {
      const rank = 2;
      const rng = new SeededRandom(4);
      await one.setHeadUpdate(rank, Float32Array.from({ length: one.hiddenSize * rank }, () => rng.normal() * 0.1));
      const y = Float32Array.from({ length: 2 * one.hiddenSize }, () => rng.normal());
      await one.lossAndGradient(y, Int32Array.of(3, 9), Float32Array.of(0.5, 0.5));
      await one.stepHeadUpdate({ learningRate: 0.01, t: 1, clipNorm: 1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 });
      await one.saveHeadUpdate(file, job, 3, rank);
      await two.loadHeadUpdate(file, job, 3, rank);
      const [a, b] = [await one.exportHeadUpdate(true), await two.exportHeadUpdate(true)];
      for (const k of ['a', 'b', 'ma', 'va', 'mb', 'vb'] as const) assert.deepEqual(Array.from(b[k]!), Array.from(a[k]!), k);
      assert.ok(a.b.some((x) => x !== 0), 'B moved');
      assert.deepEqual(Array.from(await two.losses(y, Int32Array.of(3, 9))), Array.from(await one.losses(y, Int32Array.of(3, 9))));
      await assert.rejects(two.loadHeadUpdate(file, job, 4, rank), { code: 'BAD_ARGUMENT' });
      await assert.rejects(two.loadHeadUpdate(file, job.replace('0', '1'), 3, rank), { code: 'BAD_ARGUMENT' });
      await assert.rejects(two.loadHeadUpdate(file, job, 3, rank + 1), { code: 'BAD_ARGUMENT' });
      const bytes = fs.readFileSync(file);
      bytes[bytes.length - 100]! ^= 1;
      fs.writeFileSync(file, bytes);
      await assert.rejects(two.loadHeadUpdate(file, job, 3, rank), { code: 'BAD_ARGUMENT' });
      assert.deepEqual(Array.from((await two.exportHeadUpdate()).b), Array.from(a.b), 'a refused file leaves the head update as it was');
    } finally {
      one.dispose();
      two.dispose();
    }
  });

  it('over candidate rows: a run within every row is the whole head\'s; within the rows a whole run kept, each loss moves by -log(1 - what the check says is left out), B\'s gradient stays on those rows; bad row lists are refused', async () => {
    const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 11, type: 'q8_0' });
    // Every token sparse over the rows within 1.5 nats of its largest logit.
    const head = await DeviceHead.open(model, eps, 1, { tailMass: 1, tailNats: 1.5, maxCandidates: 1 << 20 });
    try {
      const d = head.hiddenSize;
      const V = head.vocabularySize;
      const rank = 3;
      const rng = new SeededRandom(5);
      const n = 6;
      const y = Float32Array.from({ length: n * d }, () => rng.normal() * 2);
      const targets = Int32Array.from({ length: n }, (_, j) => (j * 131 + 17) % V);
      const weights = new Float32Array(n).fill(1 / n);
      const a = Float32Array.from({ length: d * rank }, (_, i) => Math.sin(i) * 0.3);
      const b = Float32Array.from({ length: V * rank }, (_, i) => Math.cos(i * 0.7) * 0.5);
      const run = async (rows?: Parameters<DeviceHead['lossAndGradient']>[3]) => {
        await head.setHeadUpdate(rank, a, b);
        const r = await head.lossAndGradient(y, targets, weights, rows);
        await head.stepHeadUpdate({ learningRate: 0, t: 1, clipNorm: 1e30, beta1: 0.9, beta2: 0.999, epsilon: 1e-8 });
        return { ...r, gb: (await head.exportHeadUpdate(true)).mb!.map((m) => m / 0.1) };
      };
      const whole = await run({ collect: true, segments: Int32Array.of(4, 2) });
      const found = whole.rows!;
      assert.deepEqual(Array.from(found.dense), [0, 0], 'every token sparse');
      for (let j = 0; j < n; j++) {
        const s = j < 4 ? 0 : 1;
        const mine = Array.from(found.ids.subarray(found.offsets[s]!, found.offsets[s + 1]!));
        assert.deepEqual(mine, [...new Set(mine)].sort((x, y) => x - y), 'ascending without repeats');
        assert.ok(mine.includes(targets[j]!) && mine.includes(whole.top[j]!), `token ${j} keeps its target and its top row`);
      }
      const kept = Int32Array.from(new Set(found.ids)).sort();
      assert.ok(kept.length < V / 2, `${kept.length} of ${V} rows kept`);

      const all = await run({ within: Int32Array.from({ length: V }, (_, i) => i) });
      for (let j = 0; j < n; j++) assert.ok(Math.abs(all.losses[j]! - whole.losses[j]!) <= 1e-5 * whole.losses[j]!, `every row: loss ${j}`);
      const scale = Math.max(...Array.from(whole.grad, Math.abs));
      for (let i = 0; i < n * d; i++) assert.ok(Math.abs(all.grad[i]! - whole.grad[i]!) <= 1e-5 * scale, `every row: dy[${i}]`);

      const checked = await head.lossAndGradient(y, targets, weights, { check: kept });
      const leftOut = checked.leftOutMax!;
      assert.ok(leftOut > 0 && leftOut < 1 && checked.leftOutMean! <= leftOut, `left out: largest ${leftOut}, mean ${checked.leftOutMean}`);
      const within = await run({ within: kept });
      let largest = 0;
      for (let j = 0; j < n; j++) {
        const drop = whole.losses[j]! - within.losses[j]!;
        assert.ok(drop >= -1e-5, `token ${j}: the rows' softmax cannot lose more than the whole one`);
        largest = Math.max(largest, drop);
      }
      assert.ok(Math.abs(largest - -Math.log1p(-leftOut)) <= 1e-3 * largest + 1e-5, `largest loss change ${largest} against -log(1 - ${leftOut})`);
      assert.deepEqual(Array.from(within.top), Array.from(whole.top));
      const inside = new Set(kept);
      for (let v = 0; v < V; v++) if (!inside.has(v)) for (let c = 0; c < rank; c++) assert.equal(within.gb[v * rank + c], 0, `B's gradient on row ${v}, not among the rows`);

      const bad = async (rows: Parameters<DeviceHead['lossAndGradient']>[3]) => assert.rejects(head.lossAndGradient(y, targets, weights, rows), { code: 'BAD_ARGUMENT' });
      await bad({ within: Int32Array.from(kept).reverse() });
      await bad({ within: kept.filter((v) => v !== targets[0]) });
      await bad({ within: kept, check: kept });
      await bad({ check: Int32Array.of(V) });
      await bad({ collect: true, segments: Int32Array.of(4, 1) });
      await bad({ collect: true, segments: Int32Array.of(6, 0) });
    } finally {
      head.dispose();
    }
  });

  it('refuses a target outside the vocabulary and a file without a head, with typed errors', async () => {
    const model = tinyModel({ layers: 2, embd: 64, heads: 4, seed: 11 });
    const head = await DeviceHead.open(model, eps, 1);
    try {
      await assert.rejects(head.losses(new Float32Array(head.hiddenSize), Int32Array.of(head.vocabularySize)), { code: 'BAD_ARGUMENT' });
    } finally {
      head.dispose();
    }
    await assert.rejects(DeviceHead.open(__filename, eps, 1), { code: 'MODEL_LOAD_FAILED' });
  });
});
