import * as assert from 'node:assert/strict';
import { CandidateRows, CHECK_EVERY, LEFT_OUT_BOUND } from '../../../../../extension/core/job/CandidateRows';
import type { HeadRun, RowRequest } from '../../../../../extension/native/NativeAddon';

/** A head run whose sequence k kept rows `kept[k]` (ascending); `dense`: sequences with a token that took the dense product. */
function runOf(kept: number[][], leftOutMax?: number, dense: number[] = []): HeadRun {
  const offsets = [0];
  for (const k of kept) offsets.push(offsets[offsets.length - 1]! + k.length);
  return {
    losses: new Float32Array(4), top: new Int32Array(4), denseTokens: dense.length, leftOutMax,
    rows: { offsets: Int32Array.from(offsets), ids: Int32Array.from(kept.flat()), dense: Uint8Array.from(kept, (_, k) => (dense.includes(k) ? 1 : 0)) },
  };
}

describe('CandidateRows (label-private later epochs over the rows a whole-head step kept)', () => {
  const perEpoch = 2 * CHECK_EVERY;
  const train = [Int32Array.of(1, 2), Int32Array.of(3, 4)];
  const targets = Int32Array.of(2, 9, 4, 9);
  const seqs = [0, 1];
  const lengths = [2, 2];

  it('takes the whole head in the first epoch; in a later one checks the next step, then 2, 4 and 8 steps on while under a tenth of the bound; between checks runs over the union of the rows kept, the workspace\'s ids and the targets', () => {
    const c = new CandidateRows(perEpoch, train, 100);
    const first = c.request(0, seqs, lengths, targets);
    assert.deepEqual(first, { collect: true, segments: Int32Array.of(2, 2) });
    c.taken(0, seqs, first, runOf([[2, 7, 9], [4, 9, 50]]));
    const check = c.request(perEpoch, seqs, lengths, targets);
    assert.deepEqual(Array.from(check.check!), [1, 2, 3, 4, 7, 9, 50]);
    assert.equal(check.collect, true);
    c.taken(perEpoch, seqs, check, runOf([[2, 7, 9], [4, 9, 60]], LEFT_OUT_BOUND / 2));
    const kinds: string[] = [];
    for (let i = perEpoch + 1; i < 2 * perEpoch; i++) {
      const req = c.request(i, seqs, lengths, targets);
      kinds.push(req.check ? 'check' : req.within ? 'rows' : 'whole');
      if (req.within) assert.deepEqual(Array.from(req.within), [1, 2, 3, 4, 7, 9, 60], 'the check\'s whole run refreshed the rows');
      c.taken(i, seqs, req, req.check ? runOf([[2, 7, 9], [4, 9, 60]], i === perEpoch + 1 ? LEFT_OUT_BOUND / 2 : 0) : runOf([]));
    }
    // perEpoch + 1: a check (the first found a fifth of the bound); then under a tenth: 1, 2, 4, 8 steps apart.
    assert.deepEqual(kinds, ['check', 'check', 'rows', 'check', 'rows', 'rows', 'rows', 'check', 'rows', 'rows', 'rows', 'rows', 'rows', 'rows', 'rows']);
    assert.equal(CHECK_EVERY, 8);
    assert.deepEqual({ ...c.stats, meanRows: Math.round(c.stats.meanRows) }, { withinSteps: 11, wholeSteps: 6, checks: 5, failedChecks: 0, leftOutMax: LEFT_OUT_BOUND / 2, meanRows: 7 });
  });

  it('a failed check sends the rest of its epoch back to the whole head; a sequence with a dense token, or over an eighth of the vocabulary, keeps no rows', () => {
    const c = new CandidateRows(perEpoch, train, 100);
    c.taken(0, seqs, { collect: true }, runOf([[2, 9], [4, 9]]));
    const check = c.request(perEpoch, seqs, lengths, targets);
    c.taken(perEpoch, seqs, check, runOf([[2, 9], [4, 9]], 0.5));
    assert.equal(c.stats.failedChecks, 1);
    for (let i = perEpoch + 1; i < 2 * perEpoch; i++) assert.deepEqual(c.request(i, seqs, lengths, targets), { collect: true, segments: Int32Array.of(2, 2) }, `step ${i}`);
    assert.ok(c.request(2 * perEpoch, seqs, lengths, targets).check, 'the next epoch starts with a check again');

    const d = new CandidateRows(perEpoch, train, 100);
    d.taken(0, seqs, { collect: true }, runOf([[2, 9], []], undefined, [1]));
    assert.deepEqual(d.request(perEpoch, seqs, lengths, targets), { collect: true, segments: Int32Array.of(2, 2) }, 'sequence 1 had a dense token');
    assert.ok(d.request(perEpoch, [0], [2], targets.subarray(0, 2)).check, 'sequence 0 alone has rows');

    // Over an eighth of the vocabulary (here 100 rows): not worth keeping.
    const wide = new CandidateRows(perEpoch, train, 100);
    wide.taken(0, seqs, { collect: true }, runOf([[2, 9], Array.from({ length: 13 }, (_, i) => i * 7)]));
    assert.deepEqual(wide.request(perEpoch, seqs, lengths, targets), { collect: true, segments: Int32Array.of(2, 2) }, 'sequence 1 kept 13 of 100 rows');
  });

  it('a run without rows (a request the head did not collect for) changes nothing', () => {
    const c = new CandidateRows(perEpoch, train, 100);
    const req: RowRequest = { collect: true };
    c.taken(0, seqs, req, { losses: new Float32Array(4), top: new Int32Array(4), denseTokens: 0 });
    assert.deepEqual(c.request(perEpoch, seqs, lengths, targets), { collect: true, segments: Int32Array.of(2, 2) });
  });
});
