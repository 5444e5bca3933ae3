import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone } from '../../../extension/core/model/Backbone';
import { readGgufFile } from '../../../extension/core/model/gguf/GgufFile';
import { writeTinyModel } from '../../../extension/core/model/tinyModel';
import { scanWorkspace } from '../../../extension/core/workspace/scanWorkspace';
import { fitSpmVocabulary, NORMAL_TOKEN, pruneVocabulary, spmMissing, tokenCounts } from '../../../harness/spmVocabulary';
import { skipBecause } from '../../helpers/models';
import { tmpDir } from '../../helpers/workspaces';

/** The quality benchmark's tokenizer: a sentencepiece vocabulary fitted to code, as llama.cpp reads it. */
describe('sentencepiece vocabulary for the stand-in', function () {
  this.timeout(120_000);
  const root = path.resolve(__dirname, '..', '..', '..', '..');
  const dir = tmpDir('spm');
  const corpus = path.join(dir, 'corpus.txt');
  const vocab = path.join(dir, 'vocab.gguf');
  let text = '';

  before(function () {
    const missing = spmMissing();
    if (missing) skipBecause(this, missing);
    text = scanWorkspace(path.join(root, 'extension')).files.map((f) => f.text).join('\n').slice(0, 400_000);
    fs.writeFileSync(corpus, text);
    fitSpmVocabulary(corpus, vocab, 1000);
  });

  it('writes llama SPM rows: <unk>, <s>, </s>, 256 byte tokens, then learned pieces with indentation among them', () => {
    const kv = readGgufFile(vocab).kv;
    const tokens = kv.get('tokenizer.ggml.tokens')!.value as string[];
    const types = kv.get('tokenizer.ggml.token_type')!.value as number[];
    assert.equal(tokens.length, 1000);
    assert.deepEqual(tokens.slice(0, 3), ['<unk>', '<s>', '</s>']);
    assert.deepEqual(types.slice(0, 3), [2, 3, 3]);
    assert.equal(tokens[3 + 0x0a], '<0x0A>');
    assert.ok(types.slice(3, 259).every((t) => t === 6));
    assert.ok(types.slice(259).every((t) => t === NORMAL_TOKEN));
    assert.ok(tokens.includes('\u2581\u2581'), 'a whitespace-only piece (indentation) is learned');
    assert.equal(kv.get('tokenizer.ggml.add_space_prefix')!.value, false);
  });

  it('llama.cpp tokenizes code with it and gives the same text back, whitespace and newlines included', async () => {
    const model = path.join(dir, 'model.gguf');
    writeTinyModel({ out: model, layers: 1, embd: 64, heads: 2, kvHeads: 2, ff: 64, vocab, seed: 3 });
    const bb = await Backbone.open(model, { threads: 1 });
    try {
      const sample = 'export function f(x: number): number {\n    return x * 2;\t// twice\n}\n\n  const s = "é ü";\n';
      const ids = bb.tokenize(sample, false);
      assert.ok(ids.length < sample.length, 'pieces longer than one character are used');
      assert.equal(Buffer.concat([...ids].map((id) => bb.tokenBytes(id))).toString('utf8'), sample);
    } finally {
      bb.dispose();
    }
  });

  it('counts what the tokenizer emits over a text: every token of it, most learned pieces more than once', async () => {
    const { counts, tokens, pairs } = await tokenCounts(vocab, text);
    assert.equal(counts.reduce((a, b) => a + b, 0), tokens);
    assert.equal([...pairs.values()].reduce((a, b) => a + b, 0), tokens - 1, 'every token but the first follows one');
    const types = readGgufFile(vocab).kv.get('tokenizer.ggml.token_type')!.value as number[];
    const learned = types.map((t, i) => (t === NORMAL_TOKEN ? counts[i]! : -1)).filter((c) => c >= 0);
    assert.ok(learned.filter((c) => c >= 2).length > 0.8 * learned.length, 'fitted to this text, most pieces recur in it');
    assert.equal(counts[1], 0, 'no BOS when special tokens are not added');
  });

  it('pruned, keeps only the learned pieces emitted often enough, and still gives every text back', async () => {
    const minCount = 5;
    const before = await tokenCounts(vocab, text);
    const kv = readGgufFile(vocab).kv;
    const types = kv.get('tokenizer.ggml.token_type')!.value as number[];
    const rare = types.filter((t, i) => t === NORMAL_TOKEN && before.counts[i]! < minCount).length;
    assert.ok(rare > 0, 'the whole vocabulary has rarely emitted pieces to prune');
    const pruned = path.join(dir, 'pruned.gguf');
    const result = await pruneVocabulary(vocab, text, minCount, pruned);
    assert.equal(result.piecesBefore, 1000);
    assert.ok(result.piecesAfter <= 1000 - rare, `${result.piecesAfter} pieces left of 1000 with ${rare} rare`);
    assert.ok(result.rounds >= 1);
    const pkv = readGgufFile(pruned).kv;
    const tokens = pkv.get('tokenizer.ggml.tokens')!.value as string[];
    const ptypes = pkv.get('tokenizer.ggml.token_type')!.value as number[];
    assert.equal(tokens.length, result.piecesAfter);
    assert.deepEqual(tokens.slice(0, 259), (kv.get('tokenizer.ggml.tokens')!.value as string[]).slice(0, 259), 'control and byte tokens kept, in place');
    const after = await tokenCounts(pruned, text);
    const low = ptypes.map((t, i) => (t === NORMAL_TOKEN && after.counts[i]! < minCount ? tokens[i] : null)).filter((p) => p !== null);
    assert.deepEqual(low, [], 'every learned piece left is emitted at least minCount times');
    assert.ok(after.tokens > before.tokens, 'the text takes more tokens without the pruned pieces');
    const model = path.join(dir, 'pruned-model.gguf');
    writeTinyModel({ out: model, layers: 1, embd: 64, heads: 2, kvHeads: 2, ff: 64, vocab: pruned, seed: 3 });
    const bb = await Backbone.open(model, { threads: 1 });
    try {
      const sample = text.slice(0, 4000);
      assert.equal(Buffer.concat([...bb.tokenize(sample, false)].map((id) => bb.tokenBytes(id))).toString('utf8'), sample);
    } finally {
      bb.dispose();
    }
  });
});
