import * as assert from 'node:assert/strict';
import { ngramHeldOutLosses } from '../../../bench/lib/ngramBaselines';
import type { TokenCounts } from '../../../harness/spmVocabulary';

/** Counts of the corpus `ids` over a vocabulary of `V`, as tokenCounts gives them. */
function countsOf(ids: number[], V: number): TokenCounts {
  const counts = new Uint32Array(V);
  const pairs = new Map<number, number>();
  ids.forEach((id, i) => {
    counts[id]!++;
    if (i > 0) pairs.set(ids[i - 1]! * V + id, (pairs.get(ids[i - 1]! * V + id) ?? 0) + 1);
  });
  return { counts, tokens: ids.length, pairs };
}

describe('the stand-in\'s n-gram baselines (issue 37)', () => {
  it('scores every held-out token after each sequence\'s first with add-one unigram and bigram models', () => {
    // Corpus 0 1 0 1 2 over 4 ids: counts 2 2 1 0; pairs 01 twice, 10 once, 12 once.
    const fit = countsOf([0, 1, 0, 1, 2], 4);
    const r = ngramHeldOutLosses(fit, [Int32Array.from([0, 1, 3]), Int32Array.from([2])]);
    assert.equal(r.tokens, 2, 'a one-token sequence scores nothing');
    assert.ok(Math.abs(r.unigram - -(Math.log(3 / 9) + Math.log(1 / 9)) / 2) < 1e-12);
    // p(1 | 0) = (2 + 1) / (2 + 4); p(3 | 1) = (0 + 1) / (2 + 4): 1 is followed twice.
    assert.ok(Math.abs(r.bigram - -(Math.log(3 / 6) + Math.log(1 / 6)) / 2) < 1e-12);
  });

  it('a corpus that repeats a pattern gives the bigram model the lower loss on that pattern', () => {
    const fit = countsOf(Array.from({ length: 300 }, (_, i) => i % 3), 50);
    const r = ngramHeldOutLosses(fit, [Int32Array.from([0, 1, 2, 0, 1, 2])]);
    assert.ok(r.bigram < r.unigram / 2, `bigram ${r.bigram} against unigram ${r.unigram}`);
  });

  it('refuses ids outside the vocabulary and held-out text with nothing to score', () => {
    const fit = countsOf([0, 1], 2);
    assert.throws(() => ngramHeldOutLosses(fit, [Int32Array.from([0, 5])]), /outside the vocabulary of 2/);
    assert.throws(() => ngramHeldOutLosses(fit, [Int32Array.from([1])]), /no held-out token/);
  });
});
