import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone } from '../../../extension/core/model/Backbone';
import { writeTinyModel } from '../../../extension/core/model/tinyModel';
import { SeededRandom } from '../../../common/SeededRandom';
import { learningRate, PretrainSettings, Pretrainer } from '../../../bench/lib/pretrain/Pretrainer';
import { PretrainShape } from '../../../bench/lib/pretrain/pretrainGraph';
import { readWeights, writeStandIn } from '../../../bench/lib/pretrain/standInWeights';
import { tmpDir } from '../../helpers/workspaces';

/** The stand-in's pretraining graph (issue 37): llama.cpp's forward, a backward that matches finite differences, steps that learn. */
describe('the stand-in\'s pretraining graph', function () {
  this.timeout(120_000);
  const dir = tmpDir('pretrain');
  // Built-in vocabulary (its size is read from the model), 2 layers.
  const model = path.join(dir, 'tiny.gguf');
  const shapeOf = (vocab: number): PretrainShape => ({ layers: 2, embd: 64, heads: 4, ff: 96, vocab });
  const settings: PretrainSettings = { batch: 2, window: 24, peakLr: 3e-3, warmupSteps: 3, finalLrRatio: 0.1, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, clipNorm: 1, seed: 7 };
  let weights: Map<string, Float32Array>;
  let shape: PretrainShape;
  let ids: BigInt64Array;
  let targets: BigInt64Array;

  before(() => {
    writeTinyModel({ out: model, layers: 2, embd: 64, heads: 4, kvHeads: 4, ff: 96, type: 'f32', seed: 11 });
    weights = readWeights(model);
    shape = shapeOf(weights.get('token_embd.weight')!.length / 64);
    // Two windows of a repeating pattern with noise, BOS (1) first.
    const rng = new SeededRandom(3);
    const T = settings.window;
    const seq = (w: number): number[] => Array.from({ length: T + 1 }, (_, t) => (t === 0 ? 1 : 5 + ((t * (w + 2)) % 17) + (rng.next() < 0.2 ? rng.int(40) : 0)));
    const windows = [seq(0), seq(1)];
    ids = BigInt64Array.from(windows.flatMap((s) => s.slice(0, T)).map(BigInt));
    targets = BigInt64Array.from(windows.flatMap((s) => s.slice(1)).map(BigInt));
  });

  it('gives the loss llama.cpp gives for the same model and tokens', async () => {
    const trainer = await Pretrainer.create(shape, settings, 1, weights);
    const bb = await Backbone.open(model, { threads: 1 });
    try {
      const T = settings.window;
      const seqs = [0, 1].map((w) => Int32Array.from([...ids.subarray(w * T, w * T + T), targets[w * T + T - 1]!].map(Number)));
      const ref = await bb.sequenceLoss(seqs);
      const ours = await trainer.loss(ids, targets);
      assert.equal(ref.tokens, ids.length);
      assert.ok(Math.abs(ours - ref.lossSum / ref.tokens) < 2e-4, `graph ${ours} against llama.cpp ${ref.lossSum / ref.tokens}`);
    } finally {
      bb.dispose();
      await trainer.dispose();
    }
  });

  it('every tensor\'s gradient matches central differences of the loss along a direction near it', async () => {
    const trainer = await Pretrainer.create(shape, settings, 1, weights);
    try {
      const { grads } = await trainer.gradients(ids, targets);
      const rng = new SeededRandom(5);
      for (const [name, g] of grads) {
        const p = trainer.params.get(name)!;
        let gn = 0;
        for (const x of g) gn += x * x;
        gn = Math.sqrt(gn);
        assert.ok(gn > 0, `${name} has a zero gradient`);
        // u = (g / |g| + noise / |noise|), unit length: a check that a wrong term or sign fails.
        const noise = Float32Array.from(g, () => rng.normal());
        const nn = Math.sqrt(noise.reduce((a, x) => a + x * x, 0));
        const u = Float32Array.from(g, (x, i) => x / gn + noise[i]! / nn);
        const un = Math.sqrt(u.reduce((a, x) => a + x * x, 0));
        const eps = 3e-3;
        const saved = Float32Array.from(p);
        const at = async (sign: number): Promise<number> => {
          for (let i = 0; i < p.length; i++) p[i] = saved[i]! + (sign * eps * u[i]!) / un;
          return trainer.loss(ids, targets);
        };
        const fd = ((await at(1)) - (await at(-1))) / (2 * eps);
        p.set(saved);
        const analytic = g.reduce((a, x, i) => a + (x * u[i]!) / un, 0);
        assert.ok(Math.abs(fd - analytic) < 0.02 * Math.abs(analytic) + 2e-4, `${name}: finite differences ${fd}, gradient ${analytic}`);
      }
    } finally {
      await trainer.dispose();
    }
  });

  it('steps lower the loss, and a checkpoint restores weights, moments and step exactly', async () => {
    const a = await Pretrainer.create(shape, settings, 1, readWeights(model));
    const b = await Pretrainer.create(shape, settings, 1, readWeights(model));
    try {
      const first = await a.loss(ids, targets);
      for (let s = 0; s < 4; s++) await a.trainStep(ids, targets, learningRate(settings, s, 8));
      const file = path.join(dir, 'ckpt.bin');
      a.save(file, { order: 1 });
      assert.deepEqual(b.restore(file), { order: 1 });
      assert.equal(b.step, 4);
      for (let s = 4; s < 8; s++) {
        await a.trainStep(ids, targets, learningRate(settings, s, 8));
        await b.trainStep(ids, targets, learningRate(settings, s, 8));
      }
      const last = await a.loss(ids, targets);
      assert.ok(last < first - 0.5, `loss ${first} -> ${last}`);
      assert.equal(await b.loss(ids, targets), last, 'the resumed trainer took the same steps');
      fs.writeFileSync(file, Buffer.concat([fs.readFileSync(file), Buffer.from([0])]));
      assert.throws(() => b.restore(file), RangeError);
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });

  it('a model written from the trained weights gives llama.cpp the trainer\'s loss (F32) and close to it (Q8_0)', async () => {
    const t = await Pretrainer.create(shape, settings, 1, readWeights(model));
    try {
      for (let s = 0; s < 3; s++) await t.trainStep(ids, targets, learningRate(settings, s, 3));
      const ours = await t.loss(ids, targets);
      for (const type of ['f32', 'q8_0'] as const) {
        const out = path.join(dir, `trained-${type}.gguf`);
        // The built-in vocabulary: take it from the model it was written with.
        writeStandIn(out, shape, model, t.params, type, 2048);
        const bb = await Backbone.open(out, { threads: 1 });
        try {
          const T = settings.window;
          const seqs = [0, 1].map((w) => Int32Array.from([...ids.subarray(w * T, w * T + T), targets[w * T + T - 1]!].map(Number)));
          const ref = await bb.sequenceLoss(seqs);
          const tol = type === 'f32' ? 2e-4 : 2e-2;
          assert.ok(Math.abs(ref.lossSum / ref.tokens - ours) < tol, `${type}: llama.cpp ${ref.lossSum / ref.tokens}, trainer ${ours}`);
        } finally {
          bb.dispose();
        }
      }
    } finally {
      await t.dispose();
    }
  });

  it('warms up linearly, peaks, and decays along a cosine to the final share', () => {
    assert.ok(Math.abs(learningRate(settings, 0, 100) - settings.peakLr / 3) < 1e-12);
    assert.ok(Math.abs(learningRate(settings, 2, 100) - settings.peakLr) < 1e-12);
    assert.ok(Math.abs(learningRate(settings, 100, 100) - 0.1 * settings.peakLr) < 1e-12);
    assert.ok(learningRate(settings, 50, 100) < learningRate(settings, 10, 100));
  });
});
