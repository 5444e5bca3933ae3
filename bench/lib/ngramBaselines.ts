/**
 * How much a stand-in knows beyond how often tokens occur (issue 37): the
 * held-out cross-entropy of add-one-smoothed unigram and bigram models fitted
 * on the pretraining corpus's token counts (the same tokenizer), over the
 * positions the held-out loss scores: every token of each held-out sequence
 * after its first, the bigram given the token before it.
 *
 *   unigram p(t)     = (count(t) + 1) / (tokens + V)
 *   bigram  p(t | s) = (count(s t) + 1) / (count(s followed by any) + V)
 */
import type { TokenCounts } from '../../harness/spmVocabulary';

export interface NgramLosses {
  /** Nats per held-out token. */
  unigram: number;
  bigram: number;
  /** Held-out tokens scored. */
  tokens: number;
}

export function ngramHeldOutLosses(fit: TokenCounts, heldOut: readonly Int32Array[]): NgramLosses {
  const V = fit.counts.length;
  const followed = new Float64Array(V);
  for (const [key, c] of fit.pairs) followed[Math.floor(key / V)]! += c;
  let unigram = 0;
  let bigram = 0;
  let tokens = 0;
  for (const s of heldOut) {
    for (let i = 1; i < s.length; i++) {
      const before = s[i - 1]!;
      const t = s[i]!;
      if (t < 0 || t >= V || before < 0 || before >= V) throw new RangeError(`token id ${t < 0 || t >= V ? t : before} is outside the vocabulary of ${V}`);
      unigram -= Math.log((fit.counts[t]! + 1) / (fit.tokens + V));
      bigram -= Math.log(((fit.pairs.get(before * V + t) ?? 0) + 1) / (followed[before]! + V));
      tokens++;
    }
  }
  if (tokens === 0) throw new RangeError('no held-out token to score: every sequence is shorter than two tokens');
  return { unigram: unigram / tokens, bigram: bigram / tokens, tokens };
}
