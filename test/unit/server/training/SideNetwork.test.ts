import * as assert from 'node:assert/strict';
import { SeededRandom } from '../../../../common/SeededRandom';
import { FrozenHead } from '../../../../harness/tfjs/FrozenHead';
import { initialParameters, parameterNames, sideShape } from '../../../../server/training/sideNetworkSpec';
import { SideNetwork } from '../../../../harness/tfjs/SideNetwork';
import { learningRateAt } from '../../../../server/training/TrainerOptions';
import { Trainer } from '../../../../harness/tfjs/Trainer';
import { initTensorflow, tf } from '../../../../harness/tfjs/tf';
import { ActivationBatch } from '../../../../common/batchPayload';

const d = 32;
const vocab = 50;
const tapped = [0, 2, 3];

function randomArray(rng: SeededRandom, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

function problem(seed: number, rows: number) {
  const rng = new SeededRandom(seed);
  const head = randomArray(rng, vocab * d, 0.3);
  const norm = Float32Array.from({ length: d }, () => 1 + 0.1 * rng.normal());
  const layers = tapped.map(() => randomArray(rng, rows * d));
  const targets = Int32Array.from({ length: rows }, () => rng.int(vocab));
  const mask = Uint8Array.from({ length: rows }, (_, i) => (i % 5 === 4 ? 0 : 1));
  return { head, norm, batch: { rows, layers, targets, mask } as ActivationBatch };
}

/** Plain float64 cross-entropy of rmsnorm(h) W^T at the targets, masked mean. */
function plainHeadLoss(h: Float32Array, head: Float32Array, norm: Float32Array, eps: number, targets: Int32Array, mask: Uint8Array): number {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < targets.length; i++) {
    if (!mask[i]) continue;
    let ss = 0;
    for (let j = 0; j < d; j++) ss += h[i * d + j]! ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    const logits: number[] = [];
    for (let v = 0; v < vocab; v++) {
      let s = 0;
      for (let j = 0; j < d; j++) s += h[i * d + j]! * inv * norm[j]! * head[v * d + j]!;
      logits.push(s);
    }
    const m = Math.max(...logits);
    const lse = m + Math.log(logits.reduce((a, x) => a + Math.exp(x - m), 0));
    sum += lse - logits[targets[i]!]!;
    count++;
  }
  return sum / count;
}

describe('SideNetwork and Trainer (TensorFlow.js)', function () {
  this.timeout(120_000);
  let backend: string;
  before(async () => {
    backend = await initTensorflow();
    process.stdout.write(`      TensorFlow.js backend: ${backend}\n`);
  });

  it('step 0 (zero Out) gives exactly the frozen head\'s own loss', () => {
    const { head, norm, batch } = problem(1, 24);
    const net = new SideNetwork(sideShape(d, 4, tapped), initialParameters(sideShape(d, 4, tapped), 3));
    const fh = new FrozenHead(head, norm, 1e-5, 7); // 7-row chunks: exercises the online log-sum-exp
    try {
      const { lossSum, tokens } = net.lossAndGrads(batch.layers.map((l) => tf.tensor2d(l, [24, d])), batch.targets, Float32Array.from(batch.mask), fh, false);
      const want = plainHeadLoss(batch.layers[2]!, head, norm, 1e-5, batch.targets, batch.mask);
      assert.ok(Math.abs(lossSum / tokens - want) < 1e-4, `${lossSum / tokens} vs ${want}`);
    } finally {
      net.dispose();
      fh.dispose();
    }
  });

  it('hand-written gradients match TensorFlow.js autodiff (chunked head)', () => {
    const { head, norm, batch } = problem(2, 20);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 5);
    const rng = new SeededRandom(9);
    values.set('out', randomArray(rng, shape.r * d, 0.3)); // non-zero so every gradient flows
    values.set('alpha.1', Float32Array.of(0.05));
    const net = new SideNetwork(shape, values);
    const fh = new FrozenHead(head, norm, 1e-5, 7);
    const hs = batch.layers.map((l) => tf.tensor2d(l, [20, d]));
    const mask = Float32Array.from(batch.mask);
    try {
      const ours = net.lossAndGrads(hs, batch.targets, mask, fh, true);
      const auto = tf.variableGrads(() => net.referenceLoss(hs, batch.targets, mask, head, norm, 1e-5), [...net.params.values()]);
      assert.ok(Math.abs(ours.lossSum / ours.tokens - auto.value.dataSync()[0]!) < 1e-4);
      for (const name of parameterNames(shape)) {
        const a = ours.grads!.get(name)!.dataSync();
        const b = auto.grads[net.p(name).name]!.dataSync();
        let num = 0;
        let den = 0;
        for (let i = 0; i < a.length; i++) {
          num = Math.max(num, Math.abs(a[i]! - b[i]!));
          den = Math.max(den, Math.abs(b[i]!));
        }
        assert.ok(den > 0, `${name}: autodiff gradient is zero`);
        assert.ok(num / den < 1e-3, `${name}: relative diff ${num / den}`);
      }
      for (const g of ours.grads!.values()) g.dispose();
      auto.value.dispose();
      for (const g of Object.values(auto.grads)) g.dispose();
    } finally {
      hs.forEach((h) => h.dispose());
      net.dispose();
      fh.dispose();
    }
  });

  it('gradients pass a finite-difference check', () => {
    const { head, norm, batch } = problem(3, 12);
    const shape = sideShape(d, 4, tapped);
    const values = initialParameters(shape, 6);
    values.set('out', randomArray(new SeededRandom(4), shape.r * d, 0.3));
    const net = new SideNetwork(shape, values);
    const fh = new FrozenHead(head, norm, 1e-5);
    const hs = batch.layers.map((l) => tf.tensor2d(l, [12, d]));
    const mask = Float32Array.from(batch.mask);
    const lossAt = (): number => {
      const r = net.lossAndGrads(hs, batch.targets, mask, fh, false);
      return r.lossSum / r.tokens;
    };
    try {
      const { grads } = net.lossAndGrads(hs, batch.targets, mask, fh, true);
      const rng = new SeededRandom(11);
      for (const name of ['out', 'down.0', 'mid.1', 'up.2', 'alpha.0']) {
        const p = net.p(name);
        const g = grads!.get(name)!.dataSync();
        for (let trial = 0; trial < 3; trial++) {
          const i = rng.int(g.length);
          const base = p.dataSync().slice();
          const h = 1e-2;
          base[i]! += h;
          p.assign(tf.tensor(base, p.shape));
          const up = lossAt();
          base[i]! -= 2 * h;
          p.assign(tf.tensor(base, p.shape));
          const down = lossAt();
          base[i]! += h;
          p.assign(tf.tensor(base, p.shape));
          const fd = (up - down) / (2 * h);
          assert.ok(Math.abs(fd - g[i]!) <= 2e-3 + 0.05 * Math.abs(fd), `${name}[${i}]: finite difference ${fd} vs gradient ${g[i]}`);
        }
      }
      for (const g of grads!.values()) g.dispose();
    } finally {
      hs.forEach((h) => h.dispose());
      net.dispose();
      fh.dispose();
    }
  });

  it('learns a learnable synthetic task, without leaking tensors', () => {
    // Targets are a fixed function of the first tapped layer, which the head
    // cannot see on its own: only the side network can lower the loss.
    const rows = 48;
    const rng = new SeededRandom(21);
    const head = randomArray(rng, vocab * d, 0.5);
    const norm = new Float32Array(d).fill(1);
    const probe = randomArray(rng, d * vocab);
    const makeBatch = (): ActivationBatch => {
      const layers = tapped.map(() => randomArray(rng, rows * d));
      const targets = Int32Array.from({ length: rows }, (_, i) => {
        let best = 0;
        let bestScore = -Infinity;
        for (let v = 0; v < 8; v++) {
          let s = 0;
          for (let j = 0; j < d; j++) s += layers[0]![i * d + j]! * probe[j * vocab + v]!;
          if (s > bestScore) [best, bestScore] = [v, s];
        }
        return best;
      });
      return { rows, layers, targets, mask: new Uint8Array(rows).fill(1) };
    };
    const shape = sideShape(d, 2, tapped);
    const net = new SideNetwork(shape, initialParameters(shape, 1));
    const fh = new FrozenHead(head, norm, 1e-5, 16);
    const trainer = new Trainer(net, fh, { learningRate: 3e-2, warmupSteps: 5, totalSteps: 150 });
    const evalSet = [makeBatch(), makeBatch()];
    const evalLoss = (): number => {
      const r = evalSet.map((b) => trainer.evalBatch(b));
      return r.reduce((a, x) => a + x.lossSum, 0) / r.reduce((a, x) => a + x.tokens, 0);
    };
    try {
      const before = evalLoss();
      let tensorsAfterFirst = 0;
      for (let s = 0; s < 150; s++) {
        trainer.trainBatch(makeBatch());
        if (s === 0) tensorsAfterFirst = tf.memory().numTensors;
      }
      assert.equal(tf.memory().numTensors, tensorsAfterFirst, 'tensor count stable across steps');
      const after = evalLoss();
      assert.ok(after < 0.75 * before, `held-out loss ${before} -> ${after}`);
      assert.equal(trainer.step, 150);
    } finally {
      trainer.dispose();
      net.dispose();
      fh.dispose();
    }
  });

  it('warms up and decays the learning rate', () => {
    const o = { learningRate: 1, warmupSteps: 10, totalSteps: 100 };
    assert.ok(learningRateAt(0, o) < learningRateAt(5, o));
    assert.ok(Math.abs(learningRateAt(9, o) - 1) < 1e-9);
    assert.ok(learningRateAt(50, o) < 1 && learningRateAt(99, o) < learningRateAt(50, o));
    assert.ok(Math.abs(learningRateAt(100, o) - 0.1) < 1e-9);
  });
});
