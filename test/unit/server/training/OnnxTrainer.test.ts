import * as assert from 'node:assert/strict';
import type { ActivationBatch } from '../../../../common/batchPayload';
import { encodeHalf, decodeHalf } from '../../../../common/float16';
import { SeededRandom } from '../../../../common/SeededRandom';
import { OnnxEngine } from '../../../../server/training/onnx/OnnxEngine';
import { OnnxHead } from '../../../../server/training/onnx/OnnxHead';
import { OnnxTrainer } from '../../../../server/training/onnx/OnnxTrainer';
import type { SideNetworkShape } from '../../../../common/AdapterConfig';
import { initialParameters, LayoutError, parameterNames, sideShape } from '../../../../server/training/sideNetworkSpec';
import { FrozenHead } from '../../../../harness/tfjs/FrozenHead';
import { SideNetwork } from '../../../../harness/tfjs/SideNetwork';
import { initTensorflow, tf } from '../../../../harness/tfjs/tf';
import { Trainer } from '../../../../harness/tfjs/Trainer';

const d = 32;
const vocab = 50;
const tapped = [0, 2, 3];
const EPS = 1e-5;

function randomArray(rng: SeededRandom, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

/** A head whose float32 values are exactly float16 values, so both engines see the same weights. */
function problem(seed: number, rows: number) {
  const rng = new SeededRandom(seed);
  const halves = encodeHalf(randomArray(rng, vocab * d, 0.3));
  const head = decodeHalf(halves);
  const norm = Float32Array.from({ length: d }, () => 1 + 0.1 * rng.normal());
  const batch = (): ActivationBatch => ({
    rows,
    layers: tapped.map(() => randomArray(rng, rows * d)),
    targets: Int32Array.from({ length: rows }, () => rng.int(vocab)),
    mask: Uint8Array.from({ length: rows }, (_, i) => (i % 5 === 4 ? 0 : 1)),
  });
  return { halves, head, norm, batch };
}

function maxRelativeError(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / Math.max(scale, 1e-6));
  return worst;
}

/** Seeded starting values with a non-zero Out and an open second gate, so every gradient flows. */
function liveValues(shape: SideNetworkShape, seed: number): Map<string, Float32Array> {
  const values = initialParameters(shape, seed);
  values.set('out', randomArray(new SeededRandom(seed + 100), shape.r * d, 0.3));
  values.set('alpha.1', Float32Array.of(0.05));
  return values;
}

/** Every parameter's ONNX gradient against TensorFlow.js autodiff of the reference's plain forward (relative error < 2e-3). */
function assertMatchesAutodiff(shape: SideNetworkShape, values: Map<string, Float32Array>, grads: Map<string, Float32Array>, b: ActivationBatch, head: Float32Array, norm: Float32Array): void {
  const net = new SideNetwork(shape, values);
  try {
    const hs = b.layers.map((l) => tf.tensor2d(l, [b.rows, d]));
    const vars = parameterNames(shape).map((n) => net.p(n));
    const { grads: auto } = tf.variableGrads(() => net.referenceLoss(hs, b.targets, Float32Array.from(b.mask), head, norm, EPS, b.lengths), vars);
    for (const n of parameterNames(shape)) {
      const want = auto[net.p(n).name]!.dataSync() as Float32Array;
      const err = maxRelativeError(grads.get(n)!, want);
      assert.ok(err < 2e-3, `${n}: relative error ${err}`);
    }
    for (const t of [...hs, ...Object.values(auto)]) t.dispose();
  } finally {
    net.dispose();
  }
}

/** The engine's gradients at `points` against central finite differences of its own held-out loss. */
async function assertFiniteDifferences(engine: OnnxEngine, shape: SideNetworkShape, values: Map<string, Float32Array>, b: ActivationBatch, halves: Uint16Array, norm: Float32Array, points: readonly (readonly [string, number])[]): Promise<void> {
  const headOf = (): OnnxHead => new OnnxHead(halves, norm, EPS, 16);
  const opts = { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 };
  const grads = await new OnnxTrainer(engine, shape, headOf(), values, opts).gradients(b);
  const tokens = b.mask.reduce((a, x) => a + x, 0);
  const lossAt = async (name: string, i: number, delta: number): Promise<number> => {
    const v = new Map([...values].map(([k, x]) => [k, Float32Array.from(x)]));
    v.get(name)![i]! += delta;
    return (await new OnnxTrainer(engine, shape, headOf(), v, opts).evalBatch(b)).lossSum / tokens;
  };
  for (const [name, i] of points) {
    const h = 1e-2;
    const fd = ((await lossAt(name, i, h)) - (await lossAt(name, i, -h))) / (2 * h);
    const g = grads.get(name)![i]!;
    assert.ok(Math.abs(fd - g) < 2e-3 + 0.05 * Math.abs(g), `${name}[${i}]: finite difference ${fd} vs gradient ${g}`);
  }
}

describe('ONNX training engine (checked against the TensorFlow.js reference)', function () {
  this.timeout(120_000);
  let engine: OnnxEngine;
  before(async () => {
    await initTensorflow();
    engine = await OnnxEngine.create({ threads: 1 });
  });
  after(() => engine.dispose());

  it('step 0 (zero Out) gives the frozen head\'s own loss, through a head in several chunks', async () => {
    const { halves, head, norm, batch } = problem(1, 24);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 3);
    const b = batch();
    const trainer = new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 7), values, { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 });
    const fh = new FrozenHead(head, norm, EPS);
    const net = new SideNetwork(shape, values);
    try {
      const onnx = await trainer.evalBatch(b);
      const ref = net.lossAndGrads(b.layers.map((l) => tf.tensor2d(l, [24, d])), b.targets, Float32Array.from(b.mask), fh, false);
      assert.equal(onnx.tokens, ref.tokens);
      assert.ok(Math.abs(onnx.lossSum / onnx.tokens - ref.lossSum / ref.tokens) < 1e-5, `${onnx.lossSum / onnx.tokens} vs ${ref.lossSum / ref.tokens}`);
    } finally {
      net.dispose();
      fh.dispose();
    }
  });

  it('gradients of every parameter match TensorFlow.js autodiff of the plain forward', async () => {
    const { halves, head, norm, batch } = problem(2, 20);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 5);
    const rng = new SeededRandom(9);
    values.set('out', randomArray(rng, shape.r * d, 0.3)); // non-zero so every gradient flows
    values.set('alpha.1', Float32Array.of(0.05));
    const b = batch();
    const trainer = new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 16), values, { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 });
    assertMatchesAutodiff(shape, values, await trainer.gradients(b), b, head, norm);
  });

  it('gradients pass a finite-difference check of the engine\'s own loss', async () => {
    const { halves, norm, batch } = problem(4, 16);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 6);
    values.set('out', randomArray(new SeededRandom(10), shape.r * d, 0.3));
    await assertFiniteDifferences(engine, shape, values, batch(), halves, norm, [['out', 5], ['down.0', 17], ['mid.2', 3], ['up.1', 8], ['alpha.2', 0]]);
  });

  describe('with a head update of rank 3 (headRank)', () => {
    const headShape = (): SideNetworkShape => sideShape(d, 4, tapped, 2, false, { rank: 3, vocab });
    /** Live values with a non-zero B, so A's gradient flows too. */
    const headValues = (shape: SideNetworkShape, seed: number): Map<string, Float32Array> => {
      const values = liveValues(shape, seed);
      values.set('head_b', randomArray(new SeededRandom(seed + 200), vocab * 3, 0.5));
      return values;
    };

    it('starts at the backbone\'s head (B zero): the same loss as without it', async () => {
      const { halves, norm, batch } = problem(11, 18);
      const b = { ...batch(), lengths: [10, 8] };
      const shape = headShape();
      const values = initialParameters(shape, 4);
      assert.ok(values.get('head_a')!.some((x) => x !== 0), 'A starts random');
      assert.ok(values.get('head_b')!.every((x) => x === 0), 'B starts at zero');
      const plainShape = sideShape(d, 4, tapped, 2);
      const opts = { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 };
      const withHead = await new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 16), values, opts).evalBatch(b);
      const without = await new OnnxTrainer(engine, plainShape, new OnnxHead(halves, norm, EPS, 16), values, opts).evalBatch(b);
      assert.ok(Math.abs(withHead.lossSum - without.lossSum) < 1e-5 * Math.abs(without.lossSum), `${withHead.lossSum} vs ${without.lossSum}`);
    });

    it('gradients of A, B and the side network pass a finite-difference check, through a head in several chunks', async () => {
      const { halves, norm, batch } = problem(12, 16);
      const b = batch();
      const shape = headShape();
      const targetRow = b.targets[0]!;
      const otherRow = [...Array(vocab).keys()].find((v) => !b.targets.includes(v))!;
      await assertFiniteDifferences(engine, shape, headValues(shape, 8), { ...b, lengths: [16] }, halves, norm, [
        ['head_a', 7], ['head_a', 3 * 20 + 2], ['head_b', targetRow * 3 + 1], ['head_b', otherRow * 3], ['head_b', 45 * 3 + 2], ['out', 5], ['down.0', 17],
      ]);
    });

    it('Adam steps move A and B, the optimizer state holds them, and the loss falls on a repeated batch', async () => {
      const { halves, norm, batch } = problem(13, 20);
      const b = { ...batch(), lengths: [20] };
      const shape = headShape();
      const values = initialParameters(shape, 5);
      const trainer = new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 16), values, { learningRate: 2e-2, warmupSteps: 1, totalSteps: 30 });
      const first = await trainer.trainBatch(b);
      for (let s = 0; s < 29; s++) await trainer.trainBatch(b);
      const after = await trainer.evalBatch(b);
      assert.ok(after.lossSum / after.tokens < first.loss - 0.5, `${first.loss} -> ${after.lossSum / after.tokens}`);
      assert.ok(trainer.values().get('head_b')!.some((x) => x !== 0), 'B moved');
      assert.ok(maxRelativeError(trainer.values().get('head_a')!, values.get('head_a')!) > 0, 'A moved');
      const state = trainer.exportState();
      assert.deepEqual([...state.m.keys()], parameterNames(shape));
      assert.deepEqual(parameterNames(shape).slice(-2), ['head_a', 'head_b']);
      assert.ok(state.v.get('head_b')!.some((x) => x > 0));
    });
  });

  it('50 Adam steps follow the TensorFlow.js trainer on the same batches (held-out loss within 1e-3 relative)', async () => {
    const { halves, head, norm, batch } = problem(3, 24);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 7);
    const opts = { learningRate: 5e-3, warmupSteps: 5, totalSteps: 50 };
    const onnx = new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 16), values, opts);
    const fh = new FrozenHead(head, norm, EPS);
    const net = new SideNetwork(shape, values);
    const ref = new Trainer(net, fh, opts);
    try {
      const heldOut = batch();
      const before = await onnx.evalBatch(heldOut);
      for (let s = 0; s < 50; s++) {
        const b = batch();
        const x = await onnx.trainBatch(b);
        const y = ref.trainBatch(b);
        assert.equal(x.step, y.step);
        assert.ok(Math.abs(x.loss - y.loss) <= 1e-3 * Math.abs(y.loss), `step ${s}: ${x.loss} vs ${y.loss}`);
      }
      const a = await onnx.evalBatch(heldOut);
      const r = ref.evalBatch(heldOut);
      const relative = Math.abs(a.lossSum - r.lossSum) / r.lossSum;
      process.stdout.write(`      held-out loss ${(before.lossSum / before.tokens).toFixed(4)} -> onnx ${(a.lossSum / a.tokens).toFixed(5)} vs tfjs ${(r.lossSum / r.tokens).toFixed(5)} (relative ${relative.toExponential(1)})\n`);
      assert.ok(relative < 1e-3);
      assert.ok(a.lossSum < before.lossSum, 'it learns');
      const state = onnx.exportState();
      assert.equal(state.step, 50);
      assert.deepEqual([...state.m.keys()], parameterNames(shape));
    } finally {
      ref.dispose();
      net.dispose();
      fh.dispose();
    }
  });

  describe('side network v2 (causal self-attention with RoPE within each sequence)', () => {
    /** Two heads of width 8 at r 16; blocks 0 and 1 attend, the last does not. */
    const shape2: SideNetworkShape = { d, r: 16, b: 16, tappedLayers: tapped, sideNetwork: 2, attentionHeads: 2 };
    const lengths = [7, 5, 8];
    const rows = 20;
    const opts = { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 };
    const live = (seed: number): Map<string, Float32Array> => liveValues(shape2, seed);

    it('has the attention weights in every block but the last, and step 0 reproduces the backbone', async () => {
      assert.deepEqual(parameterNames(shape2).filter((n) => n.startsWith('w')), ['wq.0', 'wk.0', 'wv.0', 'wo.0', 'wq.1', 'wk.1', 'wv.1', 'wo.1']);
      assert.deepEqual(sideShape(896, 8, [0, 1], 2), { d: 896, r: 112, b: 112, tappedLayers: [0, 1], sideNetwork: 2, attentionHeads: 4 });
      const { halves, head, norm, batch } = problem(11, rows);
      const b = { ...batch(), lengths };
      const trainer = new OnnxTrainer(engine, shape2, new OnnxHead(halves, norm, EPS, 7), initialParameters(shape2, 3), opts);
      const delta = await trainer.sideDelta(b.layers, rows, lengths);
      assert.ok(delta.every((x) => x === 0), 'Out starts at zero');
      const fh = new FrozenHead(head, norm, EPS);
      const v1 = new SideNetwork(sideShape(d, 4, tapped), initialParameters(sideShape(d, 4, tapped), 3));
      try {
        const plain = v1.lossAndGrads(b.layers.map((l) => tf.tensor2d(l, [rows, d])), b.targets, Float32Array.from(b.mask), fh, false);
        const onnx = await trainer.evalBatch(b);
        assert.ok(Math.abs(onnx.lossSum - plain.lossSum) < 1e-3 * plain.lossSum, `${onnx.lossSum} vs ${plain.lossSum}`);
      } finally {
        v1.dispose();
        fh.dispose();
      }
    });

    it('gradients of every parameter, attention included, match TensorFlow.js autodiff of a per-sequence forward', async () => {
      const { halves, head, norm, batch } = problem(12, rows);
      const values = live(5);
      const b = { ...batch(), lengths };
      assertMatchesAutodiff(shape2, values, await new OnnxTrainer(engine, shape2, new OnnxHead(halves, norm, EPS, 16), values, opts).gradients(b), b, head, norm);
    });

    it('attention gradients pass a finite-difference check of the engine\'s own loss', async () => {
      const { halves, norm, batch } = problem(13, rows);
      await assertFiniteDifferences(engine, shape2, live(6), { ...batch(), lengths }, halves, norm, [['wq.0', 37], ['wk.1', 200], ['wv.0', 5], ['wo.1', 77], ['down.0', 17], ['alpha.1', 0]]);
    });

    it('is causal within a sequence and never crosses sequences', async () => {
      const { halves, norm, batch } = problem(14, rows);
      const b = batch();
      const trainer = new OnnxTrainer(engine, shape2, new OnnxHead(halves, norm, EPS, 16), live(7), opts);
      const before = await trainer.sideDelta(b.layers, rows, lengths);
      const changed = 7 + 2; // the third token of the second sequence
      const layers = b.layers.map((l) => Float32Array.from(l));
      for (let i = 0; i < d; i++) layers[0]![changed * d + i]! += 1;
      const after = await trainer.sideDelta(layers, rows, lengths);
      const rowMoved = (row: number): boolean => Array.from({ length: d }, (_, i) => Math.abs(after[row * d + i]! - before[row * d + i]!)).some((x) => x > 1e-6);
      const moved = Array.from({ length: rows }, (_, row) => rowMoved(row));
      assert.deepEqual(moved.map((m, row) => (m ? row : -1)).filter((x) => x >= 0), [9, 10, 11], 'only the changed token and the later tokens of its sequence');
    });

    it('reads every layer at unit scale and joins relative to the last layer\'s scale: hidden states 1000x larger give a 1000x larger delta', async () => {
      const { halves, norm, batch } = problem(16, rows);
      const b = batch();
      const trainer = new OnnxTrainer(engine, shape2, new OnnxHead(halves, norm, EPS, 16), live(9), opts);
      const small = await trainer.sideDelta(b.layers, rows, lengths);
      const large = await trainer.sideDelta(b.layers.map((l) => l.map((x) => x * 1000)), rows, lengths);
      assert.ok(small.some((x) => Math.abs(x) > 1e-3), 'a delta to compare');
      const err = maxRelativeError(large.map((x) => x / 1000), small);
      assert.ok(err < 1e-4, `relative error ${err}`);
    });

    it('refuses a batch without its sequence lengths, or with lengths that do not sum to its rows', async () => {
      const { halves, norm, batch } = problem(15, rows);
      const trainer = new OnnxTrainer(engine, shape2, new OnnxHead(halves, norm, EPS, 16), live(8), opts);
      await assert.rejects(trainer.trainBatch(batch()), LayoutError);
      await assert.rejects(trainer.trainBatch({ ...batch(), lengths: [7, 5, 7] }), LayoutError);
    });
  });

  describe('joining after the final norm (QST\'s form: z = norm(h) w + delta)', () => {
    const opts = { learningRate: 1e-3, warmupSteps: 1, totalSteps: 10 };
    const lengths = [7, 5, 8];
    const rows = 20;
    const after1 = sideShape(d, 4, tapped, 1, true);
    const after2: SideNetworkShape = { d, r: 16, b: 16, tappedLayers: tapped, sideNetwork: 2, attentionHeads: 2, joinAfterNorm: true };

    it('step 0 reproduces the backbone, and a non-zero Out changes the loss differently from a join before the norm', async () => {
      assert.equal(after1.joinAfterNorm, true);
      assert.equal(sideShape(d, 4, tapped).joinAfterNorm, undefined, 'absent by default (older readers see the same shape)');
      const { halves, norm, batch } = problem(21, rows);
      const b = { ...batch(), lengths };
      const before = await new OnnxTrainer(engine, sideShape(d, 4, tapped), new OnnxHead(halves, norm, EPS, 7), initialParameters(sideShape(d, 4, tapped), 3), opts).evalBatch(b);
      const zero = await new OnnxTrainer(engine, after1, new OnnxHead(halves, norm, EPS, 7), initialParameters(after1, 3), opts).evalBatch(b);
      assert.ok(Math.abs(zero.lossSum - before.lossSum) < 1e-4 * before.lossSum, `${zero.lossSum} vs ${before.lossSum}`);
      const valuesB = liveValues(sideShape(d, 4, tapped), 4);
      const joinedBefore = await new OnnxTrainer(engine, sideShape(d, 4, tapped), new OnnxHead(halves, norm, EPS, 7), valuesB, opts).evalBatch(b);
      const joinedAfter = await new OnnxTrainer(engine, after1, new OnnxHead(halves, norm, EPS, 7), valuesB, opts).evalBatch(b);
      assert.ok(Math.abs(joinedAfter.lossSum - joinedBefore.lossSum) > 1e-3, 'the two joins are different functions (and use different graphs)');
    });

    for (const [name, shape] of [['version 1', after1], ['version 2', after2]] as const) {
      it(`${name}: gradients of every parameter match TensorFlow.js autodiff`, async () => {
        const { halves, head, norm, batch } = problem(22, rows);
        const values = liveValues(shape, 5);
        const b = { ...batch(), lengths };
        assertMatchesAutodiff(shape, values, await new OnnxTrainer(engine, shape, new OnnxHead(halves, norm, EPS, 16), values, opts).gradients(b), b, head, norm);
      });
    }

    it('gradients pass a finite-difference check of the engine\'s own loss', async () => {
      const { halves, norm, batch } = problem(23, rows);
      await assertFiniteDifferences(engine, after2, liveValues(after2, 6), { ...batch(), lengths }, halves, norm, [['out', 5], ['wq.0', 37], ['down.2', 17], ['up.1', 8], ['alpha.2', 0]]);
    });
  });

  it('refuses a provider that cannot run, at start-up', async () => {
    await assert.rejects(OnnxEngine.create({ device: 'cuda', threads: 1 }), (err: Error & { code?: string }) => err.code === 'NO_BACKEND');
  });
});
