import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone, captureView, readModelTensor } from '../../../../../extension/core/model/Backbone';
import { BufferPool } from '../../../../../extension/core/job/BufferPool';
import { expectCode } from '../../../../helpers/expectCode';
import { GgufWriter } from '../../../../../extension/core/model/gguf/GgufWriter';
import { ReferenceLlama } from '../../../../helpers/referenceLlama';
import { SHARED_TINY_LLAMA, TEST_MODEL_DIR, skipBecause, tinyModel } from '../../../../helpers/models';

const CODE = 'export function add(a: number, b: number): number {\n  return a + b;\n}\n';

function maxAbsDiff(got: Float32Array, want: Float64Array[]): number {
  const d = want[0]!.length;
  let m = 0;
  want.forEach((row, t) => {
    for (let i = 0; i < d; i++) m = Math.max(m, Math.abs(got[t * d + i]! - row[i]!));
  });
  return m;
}


describe('Backbone (native capture)', function () {
  this.timeout(120_000);
  let modelPath: string;
  let bb: Backbone;
  let ref: ReferenceLlama;

  before(async () => {
    // GQA: 4 query heads share 2 key/value heads.
    modelPath = tinyModel({ layers: 4, embd: 64, heads: 4, kvHeads: 2, seed: 7 });
    // Exact attention: the float64 reference is compared at 1e-4.
    bb = await Backbone.open(modelPath, { contextSize: 512, maxSequences: 4, threads: 1, flashAttention: false });
    ref = new ReferenceLlama(modelPath);
  });
  after(() => bb?.dispose());

  it('reports the model', () => {
    assert.equal(bb.info.architecture, 'llama');
    assert.equal(bb.info.layers, 4);
    assert.equal(bb.info.hiddenSize, 64);
    assert.equal(bb.info.attentionHeads, 4);
    assert.equal(bb.info.kvAttentionHeads, 2);
    assert.equal(bb.info.quantization, 'F32');
    assert.equal(bb.info.fileSizeBytes, fs.statSync(modelPath).size);
    assert.equal(bb.info.headTensor, 'output.weight');
  });

  it('captures every layer for every token equal to an independent float64 forward (GQA)', async () => {
    const tokens = bb.tokenize(CODE);
    assert.equal(tokens[0], 1, 'BOS first');
    const cap = await bb.capture([tokens], 'all');
    const want = ref.forward(tokens);
    assert.deepEqual(cap.layers, [0, 1, 2, 3]);
    for (let l = 0; l < 4; l++) {
      const diff = maxAbsDiff(captureView(cap, l, 0), want[l]!);
      assert.ok(diff <= 1e-4, `layer ${l}: max abs diff ${diff}`);
    }
  });

  it('with flash attention (the default) stays within f16 rounding of the reference', async () => {
    const fa = await Backbone.open(modelPath, { contextSize: 512, maxSequences: 1, threads: 1 });
    try {
      const tokens = fa.tokenize(CODE);
      const cap = await fa.capture([tokens], 'all');
      const diff = maxAbsDiff(cap.data[3]!, ref.forward(tokens)[3]!);
      assert.ok(diff <= 2e-2, `${diff}`);
    } finally {
      fa.dispose();
    }
  });

  it('captures several sequences in one decode, each equal to the reference', async () => {
    const seqs = [bb.tokenize(CODE), bb.tokenize('const x = 1;'), bb.tokenize('while (true) { break; }\n')];
    const cap = await bb.capture(seqs, [0, 2, 3]);
    seqs.forEach((s, i) => {
      const want = ref.forward(s);
      cap.layers.forEach((layer, slot) => {
        const diff = maxAbsDiff(captureView(cap, slot, i), want[layer]!);
        assert.ok(diff <= 1e-4, `sequence ${i} layer ${layer}: ${diff}`);
      });
    });
  });

  it('gives the same numbers alone or batched, and run to run', async () => {
    const a = bb.tokenize(CODE);
    const b = bb.tokenize('import * as fs from "node:fs";');
    const alone1 = await bb.capture([a], 'all');
    const alone2 = await bb.capture([a], 'all');
    const batched = await bb.capture([b, a], 'all');
    for (let slot = 0; slot < 4; slot++) {
      assert.deepEqual(captureView(alone2, slot, 0), captureView(alone1, slot, 0), 'run to run');
      const x = captureView(alone1, slot, 0);
      const y = captureView(batched, slot, 1);
      let m = 0;
      for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
      assert.ok(m <= 1e-5, `alone vs batched, slot ${slot}: ${m}`);
    }
  });

  it('takes its arrays from a pool: a batch of another size reuses them, and a new one holds the whole context', async () => {
    const a = bb.tokenize(CODE);
    const b = bb.tokenize('import * as fs from "node:fs";');
    const alone = await bb.capture([a], 'all');
    const d = bb.info.hiddenSize;
    const pool = new BufferPool();
    const batched = await bb.capture([b, a], 'all', pool);
    const wantLarge = batched.data.map((x) => x.slice());
    assert.equal(batched.data[0]!.buffer.byteLength, bb.contextSize * d * 4, 'a new array holds the whole context');
    batched.data.forEach((x) => pool.give(x));
    // A smaller batch into the larger one's arrays, then the larger again into those.
    const small = await bb.capture([a], 'all', pool);
    assert.equal(pool.freeCount, 0, 'every array reused');
    for (let slot = 0; slot < 4; slot++) {
      assert.ok(batched.data.some((x) => x.buffer === small.data[slot]!.buffer), `slot ${slot}: the smaller batch reused an array`);
      assert.equal(small.data[slot]!.length, a.length * d);
      assert.deepEqual(small.data[slot], alone.data[slot], `slot ${slot}: the smaller batch`);
    }
    small.data.forEach((x) => pool.give(x));
    const large = await bb.capture([b, a], 'all', pool);
    for (let slot = 0; slot < 4; slot++) {
      assert.ok(small.data.some((x) => x.buffer === large.data[slot]!.buffer), `slot ${slot}: the larger batch reused the smaller one's array`);
      assert.deepEqual(large.data[slot], wantLarge[slot], `slot ${slot}: the larger batch`);
    }
  });

  it('decodes long inputs in chunks with the same numbers (sequences crossing chunk borders)', async () => {
    const chunked = await Backbone.open(modelPath, { contextSize: 512, batchTokens: 7, maxSequences: 4, threads: 1, flashAttention: false });
    try {
      const seqs = [bb.tokenize(CODE), bb.tokenize('const x = 1;'), bb.tokenize(CODE + CODE)];
      const cap = await chunked.capture(seqs, 'all');
      seqs.forEach((s, i) => {
        const want = ref.forward(s);
        for (let l = 0; l < 4; l++) {
          const diff = maxAbsDiff(captureView(cap, l, i), want[l]!);
          assert.ok(diff <= 1e-4, `sequence ${i} layer ${l}: ${diff}`);
        }
      });
    } finally {
      chunked.dispose();
    }
  });

  it('captures a middle layer only (graph stops early)', async () => {
    const tokens = bb.tokenize(CODE);
    const cap = await bb.capture([tokens], [1]);
    const diff = maxAbsDiff(cap.data[0]!, ref.forward(tokens)[1]!);
    assert.ok(diff <= 1e-4, `${diff}`);
  });

  it('does not block the event loop while a forward pass runs', async () => {
    const tokens = new Int32Array(500).map((_, i) => 3 + (i % 200));
    let done = false;
    const p = bb.capture([tokens], 'all').then(() => (done = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(done, false, 'the event loop turned while the forward pass was running');
    await p;
    assert.equal(done, true);
  });

  it('serialises concurrent calls and keeps each result right', async () => {
    const a = bb.tokenize(CODE);
    const b = bb.tokenize('let y = 2;');
    const [ca, cb] = await Promise.all([bb.capture([a], [3]), bb.capture([b], [3])]);
    assert.ok(maxAbsDiff(ca.data[0]!, ref.forward(a)[3]!) <= 1e-4);
    assert.ok(maxAbsDiff(cb.data[0]!, ref.forward(b)[3]!) <= 1e-4);
  });

  it('tokenizes exactly like node-llama-cpp', async () => {
    const { getLlama } = await import('node-llama-cpp');
    const llama = await getLlama({ gpu: false, build: 'never' });
    const model = await llama.loadModel({ modelPath, vocabOnly: true });
    try {
      for (const text of [CODE, 'x', '  spaces\tand\ttabs\n\n', 'ünïcödé ✓']) {
        assert.deepEqual(Array.from(bb.tokenize(text, false)), model.tokenize(text).map(Number));
        assert.deepEqual(Array.from(bb.tokenize(text)), [1, ...model.tokenize(text).map(Number)], 'with BOS');
      }
    } finally {
      await model.dispose();
    }
  });

  it('gives typed errors for empty text, too long text and a layer out of range', async () => {
    await expectCode(bb.capture([bb.tokenize('', false)], 'all'), 'EMPTY_INPUT');
    await expectCode(bb.capture([new Int32Array(513).fill(5)], 'all'), 'CONTEXT_OVERFLOW');
    await expectCode(bb.capture([bb.tokenize(CODE)], [4]), 'LAYER_OUT_OF_RANGE');
    await expectCode(bb.capture([bb.tokenize(CODE)], [-1]), 'LAYER_OUT_OF_RANGE');
    await expectCode(bb.capture([new Int32Array([1, 999999])], 'all'), 'BAD_TOKEN');
    // The backbone still works after refusing bad input.
    const cap = await bb.capture([bb.tokenize(CODE)], [0]);
    assert.equal(cap.data[0]!.length, bb.tokenize(CODE).length * 64);
  });

  it('is disposed safely: in-flight work completes, later calls get DISPOSED', async () => {
    const other = await Backbone.open(modelPath, { contextSize: 512, maxSequences: 1, threads: 1 });
    const tokens = other.tokenize(CODE);
    const inFlight = other.capture([tokens], 'all');
    await new Promise((r) => setImmediate(r));
    other.dispose();
    const cap = await inFlight; // started before dispose: must finish without a crash
    assert.equal(cap.data.length, 4);
    await expectCode(other.capture([tokens], 'all'), 'DISPOSED');
    await expectCode(() => other.tokenize('x'), 'DISPOSED');
    other.dispose(); // twice is harmless
  });
});

describe('Backbone: bad model files', function () {
  this.timeout(60_000);
  const bad = (name: string): string => path.join(TEST_MODEL_DIR, name);
  before(() => fs.mkdirSync(TEST_MODEL_DIR, { recursive: true }));

  it('missing file', () => expectCode(Backbone.open(bad('does-not-exist.gguf')), 'MODEL_NOT_FOUND'));

  it('not a GGUF', async () => {
    fs.writeFileSync(bad('text.gguf'), 'this is not a model\n'.repeat(10));
    await expectCode(Backbone.open(bad('text.gguf')), 'NOT_GGUF');
  });

  it('truncated GGUF (header and data)', async () => {
    const full = fs.readFileSync(tinyModel({ layers: 2, embd: 32, heads: 2 }));
    fs.writeFileSync(bad('trunc-data.gguf'), full.subarray(0, full.length - 1000));
    await expectCode(Backbone.open(bad('trunc-data.gguf')), 'TRUNCATED_GGUF');
    fs.writeFileSync(bad('trunc-head.gguf'), full.subarray(0, 300));
    await expectCode(Backbone.open(bad('trunc-head.gguf')), 'TRUNCATED_GGUF');
  });

  it('unsupported architecture', async () => {
    new GgufWriter().string('general.architecture', 'mamba').u32('mamba.block_count', 1).write(bad('mamba.gguf'));
    await expectCode(Backbone.open(bad('mamba.gguf')), 'UNSUPPORTED_ARCHITECTURE');
  });
});

describe('Backbone: generated model types and real files', function () {
  this.timeout(120_000);

  for (const type of ['f16', 'q8_0', 'q4_0'] as const) {
    it(`loads and captures a ${type} tiny model close to the f32 reference`, async () => {
      const opts = { layers: 2, embd: 64, heads: 4, kvHeads: 1, seed: 3 };
      const f32 = tinyModel(opts);
      const q = tinyModel({ ...opts, type });
      const bb = await Backbone.open(q, { contextSize: 256, maxSequences: 1, threads: 1, flashAttention: false });
      try {
        assert.equal(bb.info.quantization, type.toUpperCase());
        const tokens = bb.tokenize(CODE);
        const cap = await bb.capture([tokens], 'all');
        const want = new ReferenceLlama(f32).forward(tokens);
        const tol = { f16: 0.02, q8_0: 0.1, q4_0: 0.6 }[type];
        const scale = Math.max(...want[1]!.flatMap((r) => Array.from(r, Math.abs)));
        const diff = maxAbsDiff(cap.data[1]!, want[1]!);
        assert.ok(diff / scale < tol, `${type}: relative diff ${diff / scale}`);
      } finally {
        bb.dispose();
      }
    });
  }

  it('reads tensors as float32 with ggml dequantization', async () => {
    const opts = { layers: 1, embd: 64, heads: 4, seed: 5 };
    const exact = await readModelTensor(tinyModel(opts), 'blk.0.attn_q.weight');
    const q8 = await readModelTensor(tinyModel({ ...opts, type: 'q8_0' }), 'blk.0.attn_q.weight');
    assert.deepEqual(exact.shape, [64, 64]);
    assert.equal(q8.type, 'q8_0');
    let m = 0;
    let amax = 0;
    for (let i = 0; i < exact.data.length; i++) {
      m = Math.max(m, Math.abs(exact.data[i]! - q8.data[i]!));
      amax = Math.max(amax, Math.abs(exact.data[i]!));
    }
    assert.ok(m > 0 && m <= amax / 127, `q8_0 error ${m} vs bound ${amax / 127}`);
    const rows = await readModelTensor(tinyModel(opts), 'blk.0.attn_q.weight', 10, 3);
    assert.deepEqual(rows.data, exact.data.subarray(10 * 64, 13 * 64));
    await expectCode(readModelTensor(tinyModel(opts), 'no.such.tensor'), 'NO_SUCH_TENSOR');
  });

  it('uses token_embd.weight as the head of a tied model', async () => {
    const bb = await Backbone.open(tinyModel({ layers: 1, embd: 32, heads: 2, untiedHead: false }), { contextSize: 64, maxSequences: 1, threads: 1 });
    try {
      assert.equal(bb.info.headTensor, 'token_embd.weight');
      const cap = await bb.capture([bb.tokenize('a = b')], 'all');
      assert.ok(cap.data[0]!.every(Number.isFinite));
    } finally {
      bb.dispose();
    }
  });

  it('captures on the real llama-2-tiny-random.gguf (32k SPM vocabulary)', async function () {
    if (!fs.existsSync(SHARED_TINY_LLAMA)) skipBecause(this, `${SHARED_TINY_LLAMA} is absent`);
    const bb = await Backbone.open(SHARED_TINY_LLAMA, { contextSize: 256, maxSequences: 2, threads: 1, flashAttention: false });
    try {
      assert.equal(bb.info.vocabularySize, 32000);
      const a = bb.tokenize(CODE);
      const b = bb.tokenize('def main():\n    print("hi")\n');
      const cap = await bb.capture([a, b], 'all');
      const ref = new ReferenceLlama(SHARED_TINY_LLAMA);
      // An F16 model: llama.cpp rounds activations to f16 on most CPUs (verified-facts: ~3.5e-3).
      for (const [i, s] of [a, b].entries()) {
        const diff = maxAbsDiff(captureView(cap, 0, i), ref.forward(s)[0]!);
        assert.ok(diff <= 1e-2, `sequence ${i}: ${diff}`);
      }
    } finally {
      bb.dispose();
    }
  });
});
