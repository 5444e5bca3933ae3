import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone, readModelTensor } from '../../extension/core/model/Backbone';
import { evaluateWorkspace } from '../../extension/core/workspace/evaluateWorkspace';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { generate } from '../../extension/core/completion/generate';
import { expectCode } from '../helpers/expectCode';
import { modelFingerprint } from '../../extension/core/model/modelFingerprint';
import { SeededRandom } from '../../common/SeededRandom';
import { ADAPTER_FORMAT_VERSION, decodeAdapter, encodeAdapter } from '../../common/AdapterFile';
import { initialParameters, parameterNames, parameterShape, sideShape } from '../../server/training/sideNetworkSpec';
import { encodeHalf } from '../../common/float16';
import { OnnxEngine } from '../../server/training/onnx/OnnxEngine';
import { OnnxHead } from '../../server/training/onnx/OnnxHead';
import { OnnxTrainer } from '../../server/training/onnx/OnnxTrainer';
import { SideNetwork } from '../../harness/tfjs/SideNetwork';
import { testAdapterConfig } from '../../harness/adapters';
import { initTensorflow, tf } from '../../harness/tfjs/tf';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';
import { DEVICE_CLI } from '../../harness/serverProcess';

const CODE = 'export function total(items: number[]): number {\n  let sum = 0;\n  for (const x of items) sum += x;\n  return sum;\n}\n';


/** A side network with random non-zero weights (Out included), as the server would save it. */
function randomAdapter(fp: string, d: number, layers: number[], seed: number, version: 1 | 2 = 1, joinAfterNorm = false): { file: Buffer; net: SideNetwork } {
  // Version 2 with two heads of width 8, so the per-head split is exercised.
  const shape = version === 1 ? sideShape(d, 4, layers, 1, joinAfterNorm) : { ...sideShape(d, 4, layers, 2, joinAfterNorm), attentionHeads: 2 };
  const values = initialParameters(shape, seed);
  const rng = new SeededRandom(seed + 1);
  values.set('out', Float32Array.from({ length: shape.r * d }, () => rng.normal() * 0.2));
  layers.forEach((_, k) => values.set(`alpha.${k}`, Float32Array.of(rng.normal() * 0.2)));
  // Strong attention outputs, so a wrong attention on the device would show in the loss.
  for (const name of parameterNames(shape).filter((n) => n.startsWith('wo.'))) values.set(name, Float32Array.from({ length: shape.r * shape.r }, () => rng.normal() * 0.5));
  const net = new SideNetwork(shape, values);
  const tensors = parameterNames(shape).map((n) => ({ name: n, shape: net.p(n).shape, data: values.get(n)! }));
  return { file: encodeAdapter(fp, testAdapterConfig(shape), { steps: 0 }, tensors), net };
}

describe('side network inside llama.cpp on the device', function () {
  this.timeout(300_000);
  before(() => initTensorflow());

  for (const [version, joinAfterNorm] of [[1, false], [2, false], [2, true]] as const) it(`side network ${version}${joinAfterNorm ? ' joining after the final norm' : ''} matches the server's TensorFlow.js forward on the same inputs (loss per sequence, two sequences in one decode)`, async () => {
    const modelPath = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, seed: 21 });
    const bb = await Backbone.open(modelPath, { contextSize: 256, maxSequences: 2, threads: 1, flashAttention: false });
    try {
      const fp = await modelFingerprint(modelPath);
      const layers = [0, 1, 2];
      const { file, net } = randomAdapter(fp, 64, layers, 5, version, joinAfterNorm);
      const seqs = [bb.tokenize(CODE), bb.tokenize('const a = [1, 2, 3];\nconsole.log(total(a));\n')];
      const base = await bb.sequenceLoss(seqs);
      await bb.useAdapter(file);
      const device = await bb.sequenceLoss(seqs);
      // Server-side reference: capture the plain backbone's layers, run the TF.js side network, apply the real head.
      const head = (await readModelTensor(modelPath, 'output.weight')).data;
      const norm = (await readModelTensor(modelPath, 'output_norm.weight')).data;
      let refSum = 0;
      let refTokens = 0;
      for (const s of seqs) {
        const cap = await bb.capture([s.subarray(0, s.length - 1)], layers);
        const hs = cap.data.map((l) => tf.tensor2d(l, [s.length - 1, 64]));
        const loss = net.referenceLoss(hs, s.subarray(1), new Float32Array(s.length - 1).fill(1), head, norm, bb.info.normEpsilon, [s.length - 1]);
        refSum += loss.dataSync()[0]! * (s.length - 1);
        refTokens += s.length - 1;
        loss.dispose();
        hs.forEach((h) => h.dispose());
      }
      assert.equal(device.tokens, refTokens);
      const rel = Math.abs(device.lossSum - refSum) / refSum;
      assert.ok(rel <= 1e-3, `device ${device.lossSum} vs TF.js ${refSum} (relative ${rel})`);
      assert.ok(Math.abs(device.lossSum - base.lossSum) / base.lossSum > 1e-3, 'the adapter changes the output');
      await bb.clearAdapter();
      assert.equal((await bb.sequenceLoss(seqs)).lossSum, base.lossSum, 'clearing restores the plain backbone exactly');
      net.dispose();
    } finally {
      bb.dispose();
    }
  });

  it('a head update (headRank 4) runs on llama.cpp\'s logits as the server\'s training engine computes it; a vocabulary that does not fit is refused', async () => {
    const modelPath = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, seed: 23 });
    const bb = await Backbone.open(modelPath, { contextSize: 256, maxSequences: 2, threads: 1, flashAttention: false });
    const engine = await OnnxEngine.create({ threads: 1 });
    try {
      const fp = await modelFingerprint(modelPath);
      const layers = [0, 1, 2];
      const vocab = bb.info.vocabularySize;
      const shape = { ...sideShape(64, 4, layers, 2, false, { rank: 4, vocab }), attentionHeads: 2 };
      const values = initialParameters(shape, 7);
      const rng = new SeededRandom(8);
      values.set('out', Float32Array.from({ length: shape.r * 64 }, () => rng.normal() * 0.2));
      values.set('head_b', Float32Array.from({ length: vocab * 4 }, () => rng.normal() * 0.5));
      const fileOf = (v: Map<string, Float32Array>, s = shape): Buffer =>
        encodeAdapter(fp, testAdapterConfig(s), { steps: 0 }, parameterNames(s).map((n) => ({ name: n, shape: parameterShape(s, n), data: v.get(n)! })));
      const seqs = [bb.tokenize(CODE), bb.tokenize('const a = [1, 2, 3];\nconsole.log(total(a));\n')];
      await bb.useAdapter(fileOf(new Map([...values, ['head_b', new Float32Array(vocab * 4)]])));
      const withoutB = await bb.sequenceLoss(seqs);
      await bb.useAdapter(fileOf(values));
      const device = await bb.sequenceLoss(seqs);
      await bb.clearAdapter();
      // The server's side: the plain backbone's captured layers through the ONNX engine with the model's head (as float16, as uploaded).
      const head = new OnnxHead(encodeHalf((await readModelTensor(modelPath, 'output.weight')).data), (await readModelTensor(modelPath, 'output_norm.weight')).data, bb.info.normEpsilon, 1000);
      const trainer = new OnnxTrainer(engine, shape, head, values, { learningRate: 1e-3, warmupSteps: 1, totalSteps: 1 });
      let refSum = 0;
      for (const s of seqs) {
        const cap = await bb.capture([s.subarray(0, s.length - 1)], layers);
        const rows = s.length - 1;
        refSum += (await trainer.evalBatch({ rows, layers: cap.data, targets: s.subarray(1), mask: new Uint8Array(rows).fill(1), lengths: [rows] })).lossSum;
      }
      trainer.dispose();
      const rel = Math.abs(device.lossSum - refSum) / refSum;
      assert.ok(rel <= 2e-3, `device ${device.lossSum} vs the training engine ${refSum} (relative ${rel})`);
      assert.ok(Math.abs(device.lossSum - withoutB.lossSum) / withoutB.lossSum > 1e-2, 'the head update changes the loss');
      const wrongVocab = { ...shape, vocab: vocab + 1 };
      const wrongValues = new Map([...values, ['head_b', new Float32Array((vocab + 1) * 4)]]);
      await expectCode(bb.useAdapter(fileOf(wrongValues, wrongVocab)), 'ADAPTER_MODEL_MISMATCH');
      assert.equal((await bb.sequenceLoss(seqs)).lossSum, (await bb.sequenceLoss(seqs)).lossSum, 'the backbone keeps working');
    } finally {
      await engine.dispose();
      bb.dispose();
    }
  });

  it('side network 2 keeps its key cache in step with llama.cpp\'s: a reused prompt prefix gives the logits of a fresh decode', async () => {
    const modelPath = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, seed: 22 });
    const bb = await Backbone.open(modelPath, { contextSize: 256, maxSequences: 1, threads: 1, flashAttention: false });
    try {
      const { file, net } = randomAdapter(await modelFingerprint(modelPath), 64, [0, 1, 2], 6, 2);
      net.dispose();
      await bb.useAdapter(file);
      const text = bb.tokenize(CODE);
      const fresh = await bb.logitsAfter(text, 0);
      // The first 20 tokens, then a wrong continuation, then back to the true text from token 20: the wrong part must leave no trace.
      await bb.logitsAfter(text.subarray(0, 20), 0);
      await bb.logitsAfter(bb.tokenize('while (true) {}'), 20);
      const reused = await bb.logitsAfter(text.subarray(20), 20);
      let worst = 0;
      for (let i = 0; i < fresh.length; i++) worst = Math.max(worst, Math.abs(fresh[i]! - reused[i]!));
      assert.ok(worst < 1e-3, `largest logit difference ${worst}`);
      // The adapter changes the logits (so the check above is not vacuous), and a new adapter starts the cache afresh.
      await bb.clearAdapter();
      const plain = await bb.logitsAfter(text, 0);
      assert.ok(plain.some((x, i) => Math.abs(x - fresh[i]!) > 1e-2), 'the adapter changes the logits');
    } finally {
      bb.dispose();
    }
  });

  it('refuses an adapter for another model, a corrupt one and a newer format; the base model keeps working', async () => {
    const modelPath = tinyModel({ layers: 2, embd: 32, heads: 2, seed: 4 });
    const bb = await Backbone.open(modelPath, { contextSize: 128, maxSequences: 1, threads: 1 });
    try {
      const seqs = [bb.tokenize(CODE)];
      const before = await bb.sequenceLoss(seqs);
      const other = randomAdapter('0'.repeat(64), 32, [0, 1], 1);
      await expectCode(bb.useAdapter(other.file), 'ADAPTER_MODEL_MISMATCH');
      const good = randomAdapter(await modelFingerprint(modelPath), 32, [0, 1], 1);
      const corrupt = Buffer.from(good.file);
      corrupt[corrupt.length - 100] ^= 0xff;
      await expectCode(bb.useAdapter(corrupt), 'ADAPTER_CORRUPT');
      const text = good.file.toString('latin1').replace(`"version":${ADAPTER_FORMAT_VERSION}`, `"version":${ADAPTER_FORMAT_VERSION + 1}`);
      const body = Buffer.from(text, 'latin1').subarray(0, good.file.length - 32);
      const newer = Buffer.concat([body, require('node:crypto').createHash('sha256').update(body).digest()]);
      await expectCode(bb.useAdapter(newer), 'ADAPTER_VERSION');
      const wrongShape = randomAdapter(await modelFingerprint(modelPath), 32, [0], 1); // does not tap the last layer
      await expectCode(bb.useAdapter(wrongShape.file), 'ADAPTER_MODEL_MISMATCH');
      assert.equal((await bb.sequenceLoss(seqs)).lossSum, before.lossSum);
      for (const a of [other, good, wrongShape]) a.net.dispose();
    } finally {
      bb.dispose();
    }
  });

  it('gives the server\'s held-out losses on the device: with the adapter the "after" loss, without it the "before" loss', async () => {
    const ws = makeWorkspace(31);
    const model = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0', seed: 8 });
    for (const bits of [16, 8] as const) {
      const r = await new FineTuneJob({ workspace: ws, model, storeDir: tmpDir('st'), steps: 20, seqLen: 32, batchSize: 4, bits, threads: 1, learningRate: 5e-3 }).run();
      const bb = await Backbone.open(model, { contextSize: 4 * 33, maxSequences: 4, threads: 1 });
      try {
        const base = await evaluateWorkspace(bb, ws, { seqLen: 32 });
        await bb.useAdapter(fs.readFileSync(r.adapter));
        const tuned = await evaluateWorkspace(bb, ws, { seqLen: 32 });
        process.stdout.write(`      ${bits}-bit wire: device before ${base.heldOutLoss.toFixed(4)} vs server ${r.heldOutLossBefore.toFixed(4)}; device after ${tuned.heldOutLoss.toFixed(4)} vs server ${r.heldOutLossAfter.toFixed(4)}\n`);
        if (bits === 16) {
          // The CLI gives the same figure: `mobillm eval --json`, last line.
          const cli = spawnSync(process.execPath, [DEVICE_CLI, 'eval', '--workspace', ws, '--model', model, '--adapter', r.adapter, '--seq-len', '32', '--json'], { encoding: 'utf8' });
          assert.equal(cli.status, 0, cli.stderr);
          const out = JSON.parse(cli.stdout.trim().split('\n').pop()!) as { heldOutLoss: number; tokens: number };
          assert.equal(out.tokens, tuned.tokens);
          assert.ok(Math.abs(out.heldOutLoss - tuned.heldOutLoss) < 1e-3);
          assert.equal((out as { adapter?: string }).adapter, r.adapter, 'eval says which adapter it used');
          const plain = spawnSync(process.execPath, [DEVICE_CLI, 'eval', '--workspace', ws, '--model', model, '--seq-len', '32'], { encoding: 'utf8' });
          assert.match(plain.stdout, /base model \(no adapter\)/);
          const bad = spawnSync(process.execPath, [DEVICE_CLI, 'eval', '--workspace', ws, '--model', model, '--adapter', '/no/such.adapter'], { encoding: 'utf8' });
          assert.equal(bad.status, 1);
          assert.match(bad.stderr, /error\[ADAPTER_CORRUPT\]/);
          assert.ok(Math.abs(base.heldOutLoss - r.heldOutLossBefore) <= 0.01, 'before');
          assert.ok(Math.abs(tuned.heldOutLoss - r.heldOutLossAfter) <= 0.01, 'after');
        }
        assert.ok(tuned.heldOutLoss < base.heldOutLoss);
      } finally {
        bb.dispose();
      }
    }
  });

  it('side network 2 end to end, standard, label-private, joining after the norm and starting from the backbone\'s weights: the device\'s held-out loss with the adapter is the server\'s "after" loss', async () => {
    const ws = makeWorkspace(32);
    const model = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0', seed: 9 });
    // Side network 2 starts from random values unless told otherwise.
    const modes = [
      { name: 'standard (random values, the default)' }, { name: 'label-private', labelPrivate: true },
      { name: 'after the norm', joinAfterNorm: true }, { name: 'from the backbone', initFromBackbone: true },
    ];
    for (const { name, ...mode } of modes) {
      const r = await new FineTuneJob({ workspace: ws, model, storeDir: tmpDir('st'), steps: 20, seqLen: 32, batchSize: 4, bits: 16, threads: 1, learningRate: 5e-3, sideNetwork: 2, ...mode }).run();
      assert.equal(decodeAdapter(fs.readFileSync(r.adapter)).header.config.job.initFromBackbone === true, 'initFromBackbone' in mode, `${name}: initFromBackbone in the adapter's record`);
      const bb = await Backbone.open(model, { contextSize: 4 * 33, maxSequences: 4, threads: 1 });
      try {
        await bb.useAdapter(fs.readFileSync(r.adapter));
        const tuned = await evaluateWorkspace(bb, ws, { seqLen: 32 });
        process.stdout.write(`      ${name}: server ${r.heldOutLossBefore.toFixed(4)} -> ${r.heldOutLossAfter.toFixed(4)}; device after ${tuned.heldOutLoss.toFixed(4)}\n`);
        assert.ok(r.heldOutLossAfter < r.heldOutLossBefore, 'it learns');
        assert.ok(Math.abs(tuned.heldOutLoss - r.heldOutLossAfter) <= 0.01, 'after');
      } finally {
        bb.dispose();
      }
    }
  });

  it('learns a strong pattern: greedy generation produces it with the adapter and not without', async () => {
    const ws = tmpDir('pattern');
    const rng = new SeededRandom(77);
    for (let f = 0; f < 10; f++) {
      const lines: string[] = [];
      for (let i = 0; i < 40; i++) {
        lines.push(`let value${rng.int(50)} = compute(${rng.int(100)});`);
        // The rare identifier always follows "answer = @" (the "@" appears nowhere else).
        if (i % 2 === 0) lines.push('const answer = @zebraQuix;');
      }
      fs.writeFileSync(path.join(ws, `f${f}.ts`), lines.join('\n'));
    }
    const model = tinyModel({ layers: 4, embd: 128, heads: 4, kvHeads: 2, type: 'q8_0', seed: 9 });
    const r = await new FineTuneJob({ workspace: ws, model, storeDir: tmpDir('st'), epochs: 6, seqLen: 64, batchSize: 4, threads: 1, learningRate: 1e-2 }).run();
    const bb = await Backbone.open(model, { contextSize: 512, maxSequences: 1, threads: 1 });
    try {
      const prompt = 'let value3 = compute(7);\nconst answer = @';
      const plain = await generate(bb, prompt, { maxTokens: 8 });
      await bb.useAdapter(fs.readFileSync(r.adapter));
      const tuned = await generate(bb, prompt, { maxTokens: 8 });
      process.stdout.write(`      without adapter: ${JSON.stringify(plain.text)}; with: ${JSON.stringify(tuned.text)} (held-out ${r.heldOutLossBefore.toFixed(3)} -> ${r.heldOutLossAfter.toFixed(3)})\n`);
      assert.ok(tuned.text.startsWith('zebraQuix'), `with adapter: ${JSON.stringify(tuned.text)}`);
      assert.ok(!plain.text.includes('zebraQuix'));
    } finally {
      bb.dispose();
    }
  });
});
