import * as assert from 'node:assert/strict';
import { buildDataset, heldOutFiles, splitInputsTargets } from '../../../../extension/core/workspace/dataset';
import { ScannedFile } from '../../../../extension/core/workspace/scanWorkspace';

// A toy tokenizer: one token per character (its code), BOS = 1 at each file's start.
const BOS = 1;
const tokenize = (text: string): Int32Array => Int32Array.from([BOS, ...Array.from(text, (c) => c.charCodeAt(0))]);
const CTX = 7; // the context's tokens: all 7, easy to find
const files: ScannedFile[] = Array.from({ length: 10 }, (_, i) => ({ path: `src/f${i}.ts`, text: String.fromCharCode(65 + i).repeat(100), bytes: 100 }));

describe('training sequences that carry retrieved context, as completions\' prompts do', () => {
  const asked: string[] = [];
  const context = { rate: 0.5, maxTokens: 8, bos: BOS, tokensFor: (file: string, _query: string, max: number) => (asked.push(file), new Int32Array(Math.min(max, 6)).fill(CTX)) };

  it('without context the sequences are those of before; with it a share carries the context after BOS or <fim_pre>, masked out of the loss, and no code token is lost', () => {
    const plain = buildDataset(files, tokenize, { seqLen: 16, seed: 3 });
    assert.ok(plain.trainMasked.every((m) => m === undefined));
    const fim = { pre: 2, suf: 3, mid: 4 };
    const d = buildDataset(files, tokenize, { seqLen: 16, seed: 3, context, fim, fimRate: 0.5 });
    assert.deepEqual(d.heldOut, plain.heldOut, 'held-out sequences never carry context');
    const held = new Set(heldOutFiles(files, { seed: 3 }).map((f) => f.path));
    assert.ok(asked.length > 0 && asked.every((f) => !held.has(f)), 'context is asked for training files only');
    const withCtx = d.train.filter((_, i) => d.trainMasked[i]);
    assert.ok(withCtx.length > 0.3 * d.train.length && withCtx.length < 0.7 * d.train.length, `${withCtx.length} of ${d.train.length}`);
    let codeTokens = 0;
    for (const [i, s] of d.train.entries()) {
      assert.ok(s.length <= 17, 'a sequence with context is no longer than one without');
      const m = d.trainMasked[i];
      if (!m) {
        codeTokens += s.length - 1;
        continue;
      }
      const ctxAt = Array.from(s).indexOf(CTX);
      assert.ok(ctxAt === 0 || (ctxAt === 1 && (s[0] === BOS || s[0] === fim.pre)), `first, or after BOS or <fim_pre>: ${Array.from(s)}`);
      const { mask } = splitInputsTargets([s], [m]);
      // Rows predicting a context token are masked; the rest are trained on.
      // With the context first, the code's first token was the previous sequence's last target: masked too.
      Array.from(s.subarray(1)).forEach((t, row) => assert.equal(mask[row], t === CTX || (ctxAt === 0 && s[row] === CTX) ? 0 : 1, `row ${row} of ${Array.from(s)}`));
      codeTokens += mask.reduce((a, x) => a + x, 0);
    }
    assert.equal(d.trainTokens, codeTokens);
    // Every code token is still predicted: FIM sequences lose their 3 markers' room as before, nothing else.
    const plainFim = buildDataset(files, tokenize, { seqLen: 16, seed: 3, fim, fimRate: 0 });
    const trainedChars = (ds: typeof d): number => ds.train.reduce((a, s, i) => a + Array.from(s.subarray(1)).filter((t, row) => t >= 65 && !(ds.trainMasked[i] && row >= ds.trainMasked[i]![0] && row < ds.trainMasked[i]![1])).length, 0);
    const noFim = buildDataset(files, tokenize, { seqLen: 16, seed: 3, context });
    assert.equal(trainedChars(noFim), trainedChars(plainFim), 'without FIM, context displaces no code token');
  });
});
