import { HeadRun, HeadStep, HeadTuning, HeadUpdateMoments, loadNativeAddon, NativeHeadLoss, RowRequest } from '../../native/NativeAddon';
import { defaultThreads } from './Backbone';
import { MobiError } from '../MobiError';
import type { HeadDescription } from './headDescription';

/**
 * The backbone's own head on this computer (its final norm and output matrix,
 * quantized as the GGUF file stores them), for label-private training: the
 * next-token loss of hidden states and its gradient are computed here, so no
 * target id leaves the device. Calls are serialised (one native job at a time).
 */
export class DeviceHead {
  private queue: Promise<unknown> = Promise.resolve();

  /** Tokens whose gradient took the dense product over the whole vocabulary, and all tokens with a gradient, since open. */
  readonly counts = { denseTokens: 0, gradientTokens: 0 };

  private constructor(
    private readonly native: NativeHeadLoss,
    readonly vocabularySize: number,
    readonly hiddenSize: number,
    readonly type: string,
    /** The head is read through a mapping of the model file (no copy of it is held). */
    readonly mapped: boolean,
  ) {}

  /**
   * `head`: the model's output step (ModelInfo.head), or for a file known to
   * end as llama does, its final norm's epsilon. `tuning` is for tests and
   * benchmarks; the defaults serve every model.
   */
  static async open(modelPath: string, head: HeadDescription | number, threads = defaultThreads(), tuning?: HeadTuning): Promise<DeviceHead> {
    const addon = await loadNativeAddon();
    const described = typeof head === 'number' ? { epsilon: head } : head;
    const native = new addon.HeadLoss(modelPath, described.epsilon, threads, tuning, typeof head === 'number' ? undefined : { tensor: head.tensor, normScale: head.logitMultiplier, softCap: head.softCap, layerNorm: head.norm === 'layer' });
    try {
      const info = await native.load();
      return new DeviceHead(native, info.vocabularySize, info.hiddenSize, info.type, info.mapped);
    } catch (err) {
      throw MobiError.from(err);
    }
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      throw MobiError.from(err);
    });
  }

  /** Per-token losses of y [n][d] (hidden states before the final norm) for next tokens `targets`. */
  async losses(y: Float32Array, targets: Int32Array): Promise<Float32Array> {
    return (await this.guesses(y, targets)).losses;
  }

  /** Each token's highest-scoring id under the head (what the model would guess from y [n][d]), and its losses for `targets`. */
  guesses(y: Float32Array, targets: Int32Array): Promise<{ top: Int32Array; losses: Float32Array }> {
    const weights = new Float32Array(targets.length);
    return this.serial(async () => {
      const r = await this.native.run(y, targets, weights, false);
      return { top: r.top, losses: r.losses };
    });
  }

  /** Per-token losses and d(sum_j weights_j * loss_j)/dy, [n][d]; `rows`: candidate rows (RowRequest). */
  lossAndGradient(y: Float32Array, targets: Int32Array, weights: Float32Array, rows?: RowRequest): Promise<HeadRun & { grad: Float32Array }> {
    return this.serial(async () => {
      const r = await this.native.run(y, targets, weights, true, rows);
      this.counts.denseTokens += r.denseTokens;
      this.counts.gradientTokens += targets.length;
      return { ...r, grad: r.grad! };
    });
  }

  /**
   * The head update trained here (label-private): from now on the logits are
   * W z + B (A^T z), A [d][rank], B [vocab][rank], with Adam's moments
   * (zero when not given). Rank 0 removes it.
   */
  setHeadUpdate(rank: number, a?: Float32Array, b?: Float32Array, moments?: HeadUpdateMoments): Promise<void> {
    return this.serial(async () => this.native.setHeadUpdate(rank, a, b, moments));
  }

  /** One clipped Adam step of the head update from the last lossAndGradient's gradient; `stepped` false when it was not finite. */
  stepHeadUpdate(step: HeadStep): Promise<{ stepped: boolean; gradNorm: number }> {
    return this.serial(() => this.native.stepHeadUpdate(step));
  }

  /** A copy of the head update's A and B (and with `withMoments`, Adam's moments). */
  exportHeadUpdate(withMoments = false): Promise<{ rank: number; a: Float32Array; b: Float32Array } & Partial<HeadUpdateMoments>> {
    return this.serial(async () => this.native.exportHeadUpdate(withMoments));
  }

  /** The head update and its moments written to `file` (saveHeadUpdate: on a worker thread). */
  saveHeadUpdate(file: string, jobId: string, step: number, rank: number): Promise<void> {
    return this.serial(() => this.native.saveHeadUpdate(file, jobId, step, rank));
  }

  /** The head update and its moments read from `file`, checked against the job, step and rank. */
  loadHeadUpdate(file: string, jobId: string, step: number, rank: number): Promise<void> {
    return this.serial(() => this.native.loadHeadUpdate(file, jobId, step, rank));
  }

  dispose(): void {
    void this.queue.then(() => this.native.dispose());
  }
}
