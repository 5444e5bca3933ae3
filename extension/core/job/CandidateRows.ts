import type { HeadRun, RowRequest } from '../../native/NativeAddon';

/** The longest run of later steps between two checks against the whole head (see CandidateRows). */
export const CHECK_EVERY = 8;
/** The most probability a checked token's softmax may put outside its batch's rows before the epoch goes back to the whole head. */
export const LEFT_OUT_BOUND = 1e-3;
/** Rows kept for all sequences together (4 bytes each): past it, further sequences keep none and take the whole head. */
export const MAX_KEPT_ROWS = 8 * 2 ** 20;
/** A sequence whose rows are more than this share of the vocabulary keeps none (over so many rows the saving is small). */
const MAX_SHARE = 1 / 8;

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
 *     targets (a sequence with a token that needed the dense product, or with
 *     more than an eighth of the vocabulary, keeps none, and so do sequences
 *     past MAX_KEPT_ROWS for the job: 32 MB);
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
  /** Rows of all steps over the rows only (their mean is in stats). */
  private withinRows = 0;
  private readonly counts = { withinSteps: 0, wholeSteps: 0, checks: 0, failedChecks: 0, leftOutMax: 0 };

  /** Every id the training sequences hold: the rows the head update raises (it learns which tokens the workspace uses). */
  private readonly workspaceRows: Int32Array;

  /** Rows kept for all sequences together. */
  private kept = 0;
  /** Marks of the rows in a union being made (one per row of the vocabulary). */
  private readonly marks: Uint8Array;

  constructor(private readonly stepsPerEpoch: number, trainSequences: Int32Array[], vocabularySize: number) {
    this.marks = new Uint8Array(vocabularySize);
    this.workspaceRows = this.unionOf(trainSequences);
  }

  get stats(): CandidateRowStats {
    return { ...this.counts, meanRows: this.counts.withinSteps > 0 ? this.withinRows / this.counts.withinSteps : 0 };
  }

  /**
   * What to ask the head for training step `index` over `sequences` (dataset
   * indices) of `lengths` tokens whose next tokens are `targets`.
   */
  request(index: number, sequences: number[], lengths: number[], targets: Int32Array): RowRequest {
    const epoch = Math.floor(index / this.stepsPerEpoch);
    const sets = sequences.map((s) => this.rows.get(s));
    const collect = { collect: true, segments: Int32Array.from(lengths) };
    if (epoch === 0 || epoch === this.wholeEpoch || sets.some((r) => !r)) return collect;
    const union = this.unionOf([...(sets as Int32Array[]), this.workspaceRows, targets]);
    if (this.checkedEpoch !== epoch || index >= this.nextCheck) return { ...collect, check: union };
    return { within: union };
  }

  /** Keeps what a step's run found: each sequence's rows, and a check's verdict. */
  taken(index: number, sequences: number[], request: RowRequest, run: HeadRun): void {
    const c = this.counts;
    if (request.within) {
      c.withinSteps++;
      this.withinRows += request.within.length;
      return;
    }
    c.wholeSteps++;
    if (request.check) {
      const epoch = Math.floor(index / this.stepsPerEpoch);
      const leftOut = run.leftOutMax ?? 0;
      c.checks++;
      c.leftOutMax = Math.max(c.leftOutMax, leftOut);
      if (leftOut > LEFT_OUT_BOUND) {
        c.failedChecks++;
        this.wholeEpoch = epoch;
      } else {
        this.interval = this.checkedEpoch !== epoch || leftOut > LEFT_OUT_BOUND / 10 ? 1 : Math.min(2 * this.interval, CHECK_EVERY);
        this.checkedEpoch = epoch;
        this.nextCheck = index + this.interval;
      }
    }
    const found = run.rows;
    if (!found || found.dense.length !== sequences.length) return;
    sequences.forEach((s, k) => {
      this.kept -= this.rows.get(s)?.length ?? 0;
      const n = found.offsets[k + 1]! - found.offsets[k]!;
      const keep = !found.dense[k] && n <= this.marks.length * MAX_SHARE && this.kept + n <= MAX_KEPT_ROWS;
      this.rows.set(s, keep ? found.ids.slice(found.offsets[k]!, found.offsets[k + 1]!) : null);
      if (keep) this.kept += n;
    });
  }

  /** The rows of `lists`, ascending without repeats: marked, then read in order (linear in the vocabulary and the lists; no sort on this thread). */
  private unionOf(lists: Int32Array[]): Int32Array {
    const marks = this.marks;
    let count = 0;
    for (const l of lists) {
      for (let i = 0; i < l.length; i++) {
        if (marks[l[i]!] === 0) {
          marks[l[i]!] = 1;
          count++;
        }
      }
    }
    const out = new Int32Array(count);
    let at = 0;
    for (let v = 0; v < marks.length && at < count; v++) {
      if (marks[v]) {
        out[at++] = v;
        marks[v] = 0;
      }
    }
    return out;
  }
}
