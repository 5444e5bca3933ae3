import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone } from '../../extension/core/model/Backbone';
import { completionPrompt, promptWindow, PREFIX_WINDOW_STEP } from '../../extension/core/completion/CompletionEngine';
import { buildDataset } from '../../extension/core/workspace/dataset';
import { generate } from '../../extension/core/completion/generate';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { scanWorkspace } from '../../extension/core/workspace/scanWorkspace';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const SOURCE = fs.readFileSync(path.join(ROOT, 'extension', 'core', 'job', 'FineTuneJob.ts'), 'utf8');

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe('completions: prompt-cache reuse and cancellation (real llama.cpp)', function () {
  this.timeout(120_000);
  let bb: Backbone;
  before(async () => {
    bb = await Backbone.open(tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'f32', seed: 9 }), { contextSize: 2048, maxSequences: 1, threads: 1, flashAttention: false });
  });
  after(() => bb.dispose());

  it('a typed character costs only the tokens after the common prefix, with the same logits as a fresh forward', async () => {
    const before = SOURCE.slice(0, 1500);
    const first = await generate(bb, before, { maxTokens: 4 });
    assert.equal(first.promptTokensEvaluated, first.promptTokens);
    const typed = await generate(bb, `${before}x`, { maxTokens: 4 });
    process.stdout.write(`      prompt ${typed.promptTokens} tokens, evaluated ${typed.promptTokensEvaluated} after one typed character\n`);
    assert.ok(typed.promptTokensEvaluated <= 3, `evaluated ${typed.promptTokensEvaluated}`);
    const fresh = await generate(bb, `${before}x`, { maxTokens: 4, reusePrompt: false });
    assert.equal(fresh.promptTokensEvaluated, fresh.promptTokens);
    assert.deepEqual(typed.tokens, fresh.tokens, 'the same continuation with and without reuse');

    const tokens = bb.tokenize(`${before}y`);
    const p = bb.reusablePrefix(tokens);
    assert.ok(p > tokens.length - 4);
    const reusedLogits = await bb.logitsAfter(tokens.subarray(p), p);
    const freshLogits = await bb.logitsAfter(tokens, 0);
    assert.ok(maxDiff(reusedLogits, freshLogits) < 1e-4, `logits differ by ${maxDiff(reusedLogits, freshLogits)}`);
  });

  it('an edit earlier in the file invalidates the cache from the first differing token', async () => {
    const text = SOURCE.slice(0, 1200);
    await generate(bb, text, { maxTokens: 1 });
    const edited = `${text.slice(0, 300)}Z${text.slice(301)}`;
    const tokens = bb.tokenize(edited);
    const held = bb.tokenize(text);
    let first = 0;
    while (tokens[first] === held[first]) first++;
    assert.equal(bb.reusablePrefix(tokens), first);
    assert.ok(first < tokens.length / 2);
    const g = await generate(bb, edited, { maxTokens: 2 });
    const fresh = await generate(bb, edited, { maxTokens: 2, reusePrompt: false });
    assert.deepEqual(g.tokens, fresh.tokens);
  });

  it('a superseded request stops during the prompt\'s forward pass, and the next one is right', async () => {
    const long = SOURCE.slice(0, 6000);
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 5);
    const cancelled = await generate(bb, long, { maxTokens: 8, signal: abort.signal, reusePrompt: false });
    assert.equal(cancelled.stoppedBy, 'cancelled');
    assert.equal(cancelled.tokens.length, 0);
    const next = await generate(bb, long.slice(0, 3000), { maxTokens: 4 });
    const fresh = await generate(bb, long.slice(0, 3000), { maxTokens: 4, reusePrompt: false });
    assert.deepEqual(next.tokens, fresh.tokens);
  });

  it('the prompt window keeps its start while typing', () => {
    const doc = SOURCE.repeat(3);
    const a = promptWindow(doc.slice(0, 4000));
    const b = promptWindow(doc.slice(0, 4001));
    assert.equal(doc.indexOf(a), doc.indexOf(b), 'same start after one more character');
    assert.ok(a.length >= 1500 && a.length < 1500 + PREFIX_WINDOW_STEP);
  });
});

describe('completions: fill-in-the-middle prompts (a generated model that declares FIM tokens)', function () {
  this.timeout(120_000);

  it('sends prefix and suffix in the model\'s FIM format, with budgets; a model without FIM tokens gets the prefix only', async () => {
    const fimModel = await Backbone.open(tinyModel({ layers: 2, embd: 32, heads: 2, fim: true }), { contextSize: 512, maxSequences: 1, threads: 1 });
    const plain = await Backbone.open(tinyModel({ layers: 2, embd: 32, heads: 2 }), { contextSize: 512, maxSequences: 1, threads: 1 });
    try {
      const { fimPre, fimSuf, fimMid, bos } = fimModel.nativeInfo;
      assert.ok(fimPre >= 0 && fimSuf >= 0 && fimMid >= 0, 'llama.cpp reads the FIM tokens from the metadata');
      const prefix = 'function add(a, b) {\n  return ';
      const suffix = '\n}\n\nexport default add;\n';
      const p = completionPrompt(fimModel, prefix, { suffix, suffixChars: 5 });
      assert.equal(p.mode, 'fill-in-the-middle');
      const want = [bos, fimPre, ...fimModel.tokenize(prefix, false), fimSuf, ...fimModel.tokenize(suffix.slice(0, 5), false), fimMid];
      assert.deepEqual(Array.from(p.tokens), want, 'the exact token sequence');
      const g = await generate(fimModel, p.tokens, { maxTokens: 3 });
      assert.deepEqual(Array.from(g.prompt), want, 'the sequence evaluated');
      const q = completionPrompt(plain, prefix, { suffix });
      assert.equal(q.mode, 'prefix only');
      assert.deepEqual(Array.from(q.tokens), Array.from(plain.tokenize(prefix)));
      // Without a suffix: the prefix only, its start cut so that the prompt and the new tokens fit the context.
      const window = fimModel.tokenize(promptWindow('x'.repeat(5000), 1000));
      const long = completionPrompt(fimModel, 'x'.repeat(5000), { prefixChars: 1000 }).tokens;
      assert.equal(long.length, Math.min(window.length, fimModel.contextSize - 24));
      assert.deepEqual(Array.from(long.subarray(long.length - 100)), Array.from(window.subarray(window.length - 100)));
    } finally {
      fimModel.dispose();
      plain.dispose();
    }
  });
});

describe('training what completions serve: fill-in-the-middle sequences', function () {
  this.timeout(300_000);

  it('puts a share of the training sequences in FIM order and reports plain and FIM held-out loss', async () => {
    const model = tinyModel({ layers: 2, embd: 32, heads: 2, fim: true });
    const bb = await Backbone.open(model, { contextSize: 64, maxSequences: 1, threads: 1 });
    const { fimPre, fimSuf, fimMid } = bb.nativeInfo;
    bb.dispose();
    const ws = makeWorkspace(21, 10, 80);
    const r = await new FineTuneJob({ workspace: ws, model, storeDir: tmpDir('fim-store'), steps: 30, seqLen: 32, threads: 1, learningRate: 5e-3 }).run();
    assert.ok(r.heldOutFimLossBefore !== undefined && r.heldOutFimLossAfter !== undefined, 'FIM held-out loss reported');
    assert.ok(r.heldOutFimLossAfter! < r.heldOutFimLossBefore!, `FIM loss fell: ${r.heldOutFimLossBefore} -> ${r.heldOutFimLossAfter}`);
    assert.ok(r.heldOutLossAfter < r.heldOutLossBefore);
    const files = scanWorkspace(ws).files;
    const tokenize = (t: string): Int32Array => Int32Array.from(Buffer.from(t)); // any token ids: the transform is what is tested
    const data = buildDataset(files, tokenize, { seqLen: 32, fim: { pre: fimPre, suf: fimSuf, mid: fimMid }, fimRate: 0.5 });
    const inFim = data.train.filter((s) => s[0] === fimPre).length;
    assert.ok(inFim > data.train.length * 0.3 && inFim < data.train.length * 0.7, `${inFim} of ${data.train.length} in FIM order`);
    for (const s of data.train.filter((x) => x[0] === fimPre)) {
      assert.equal([...s].filter((t) => t === fimSuf).length, 1);
      assert.ok(s.indexOf(fimMid) > s.indexOf(fimSuf));
    }
    assert.equal(data.heldOutFim.length, data.heldOut.length);
    assert.equal(buildDataset(files, tokenize, { seqLen: 32 }).heldOutFim.length, 0, 'no FIM tokens, no FIM data');
  });
});
