import type { HeadRun, RowRequest } from '../../native/NativeAddon';

/** The longest run of later steps between two checks against the whole head (see CandidateRows). */
export const CHECK_EVERY = 8;
/** The most probability a checked token's softmax may put outside its batch's rows before the epoch goes back to the whole head. */
export const LEFT_OUT_BOUND = 1e-3;

/** What candidate rows did in a job: steps over the rows only, over the whole head, checks and the largest left-out probability a check found. */
export interface CandidateRowStats {
  withinSteps: number;
  wholeSteps: number;
  checks: number;
  failedChecks: number;
  leftOutMax: number;
  /** Rows per batch over its rows only, on average. */
  meanRows: number;
}

/**
 * Label-private later epochs over candidate rows. A label-private step's
 * device work in a later epoch (its forward is in the activation cache) is
 * the model's head: logits over the whole vocabulary for every token. Nearly
 * all of a token's probability is on few rows (the sparse rule's), and the
 * side network moves them little from one epoch to the next, so:
 *
 *   - a step over the whole head (every step of the first epoch) keeps, per
 *     training sequence, the rows its tokens' softmax gave weight to and its
 *     targets (a sequence with a token that needed the dense product keeps none);
 *   - a later step whose sequences all have rows takes the softmax over their
 *     union and every id of the training sequences (the rows the head update
 *     raises) only, as if the other rows had no probability;
 *   - checks compute the whole head instead (so they are exact) and measure
 *     the probability each token puts outside the union: the epoch's first
 *     step with rows for all its sequences, then the next step, then 2, 4 and
 *     at most CHECK_EVERY steps later while the checks find under a tenth of
 *     the bound (the next step again when one finds more). Above
 *     LEFT_OUT_BOUND for any token, the rest of that epoch computes the whole
 *     head and keeps its rows again, for the next epoch.
 *
 * What this changes in training is bounded by what the checks measure: a
 * token's loss by -log(1 - left out) and its gradient by twice the left-out
 * probability times the largest row of the head, at every checked step; the
 * held-out evaluation always takes the whole head. Off with `exactHead`.
 */
export class CandidateRows {
  /** Training sequence (its index in the dataset) -> its rows, ascending; null: a token needed the dense product. */
  private readonly rows = new Map<number, Int32Array | null>();
  /** The epoch in which a check failed (its later steps take the whole head). */
  private wholeEpoch = -1;
  /** The epoch in which a check last passed (no step of an epoch takes the rows before one has). */
  private checkedEpoch = -1;
  /** Steps from one check to the next (doubling while checks find well under the bound), and the next check's step. */
  private interval = 1;
  private nextCheck = 0;
  private rowSum = 0;
  readonly stats: CandidateRowStats = { withinSteps: 0, wholeSteps: 0, checks: 0, failedChecks: 0, leftOutMax: 0, meanRows: 0 };

  /** Every id the training sequences hold: the rows the head update raises (it learns which tokens the workspace uses). */
  private readonly workspaceRows: Int32Array;

  constructor(private readonly stepsPerEpoch: number, trainSequences: Int32Array[]) {
    this.workspaceRows = unionOf(trainSequences.map((s) => Int32Array.from(s).sort()));
  }

  /** What to ask the head for training step `index` over `sequences` (dataset indices) whose next tokens are `targets`. */
  request(index: number, sequences: number[], targets: Int32Array): RowRequest {
    const epoch = Math.floor(index / this.stepsPerEpoch);
    const sets = sequences.map((s) => this.rows.get(s));
    if (epoch === 0 || epoch === this.wholeEpoch || sets.some((r) => !r)) return { collect: true };
    const union = unionOf([...(sets as Int32Array[]), this.workspaceRows, Int32Array.from(targets).sort()]);
    if (this.checkedEpoch !== epoch || index >= this.nextCheck) return { collect: true, check: union };
    return { within: union };
  }

  /** Keeps what a step's run found: each sequence's rows (`lengths`: its tokens), and a check's verdict. */
  taken(index: number, sequences: number[], lengths: number[], request: RowRequest, run: HeadRun): void {
    if (request.within) {
      this.stats.withinSteps++;
      this.rowSum += request.within.length;
      this.stats.meanRows = this.rowSum / this.stats.withinSteps;
      return;
    }
    this.stats.wholeSteps++;
    if (request.check) {
      this.stats.checks++;
      this.stats.leftOutMax = Math.max(this.stats.leftOutMax, run.leftOutMax ?? 0);
      const epoch = Math.floor(index / this.stepsPerEpoch);
      const leftOut = run.leftOutMax ?? 0;
      if (leftOut > LEFT_OUT_BOUND) {
        this.stats.failedChecks++;
        this.wholeEpoch = epoch;
      } else {
        this.interval = this.checkedEpoch !== epoch || leftOut > LEFT_OUT_BOUND / 10 ? 1 : Math.min(2 * this.interval, CHECK_EVERY);
        this.checkedEpoch = epoch;
        this.nextCheck = index + this.interval;
      }
    }
    const found = run.rows;
    if (!found) return;
    let token = 0;
    sequences.forEach((s, k) => {
      const n = lengths[k]!;
      let dense = false;
      for (let j = token; j < token + n; j++) dense ||= found.dense[j] === 1;
      this.rows.set(s, dense ? null : unionOf([found.ids.slice(found.offsets[token]!, found.offsets[token + n]!).sort()]));
      token += n;
    });
  }
}

/** The sorted union of ascending lists (a list itself may repeat ids). */
function unionOf(lists: Int32Array[]): Int32Array {
  const all = new Int32Array(lists.reduce((a, l) => a + l.length, 0));
  let at = 0;
  for (const l of lists) {
    all.set(l, at);
    at += l.length;
  }
  all.sort();
  let kept = 0;
  for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[i - 1]) all[kept++] = all[i]!;
  return all.slice(0, kept);
}
