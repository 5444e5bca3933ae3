import { checkSideNetworkTensors } from '../common/AdapterConfig';
import { encodeAdapterSliced } from '../common/AdapterFile';
import { canTransition, JobState } from '../common/JobState';
import { ActivationBatch } from '../common/batchPayload';
import { MAX_EVALS_PER_JOB } from '../common/limits';
import { WireError } from '../common/WireError';
import type { JobRecord } from './storage/records';
import { wireErrorOf } from './wireErrorOf';
import type { Jobs } from './storage/Store';
import { OnnxEngine } from './training/onnx/OnnxEngine';
import { OnnxHead } from './training/onnx/OnnxHead';
import { OnnxTrainer, StepResult } from './training/onnx/OnnxTrainer';
import { adapterConfig, attentionBlocks, initialParametersAsync, parameterNames, parameterShape, SideNetworkShape } from './training/sideNetworkSpec';
import { OptimizerState } from './training/TrainerOptions';
import { readCheckpoint } from './training/readCheckpoint';

/** Non-finite steps in a row after which training stops with NON_FINITE. */
export const MAX_SKIPPED_STEPS_IN_A_ROW = 3;

export interface TrainAck {
  index: number;
  step: number;
  loss: number;
  learningRate: number;
  tokens: number;
  /** True when the batch had been trained already (resent after a drop): not trained again. */
  duplicate: boolean;
  /** True when the step gave a non-finite loss or gradient and changed nothing. */
  skipped?: boolean;
  /** Seconds the server spent on this step (training and checkpoint). */
  seconds: number;
}

/**
 * A job being trained in memory, and the one place where a job's state
 * changes (common/JobState.ts lists the transitions). Operations run one at a time, in arrival
 * order. Batches must arrive in index order; a batch below the next index was
 * already trained and is acknowledged without training (nothing twice), one
 * above it is refused (nothing skipped).
 */
export class TrainingJob {
  private chain: Promise<unknown> = Promise.resolve();
  nextIndex: number;
  /** Set when the job was stopped: every later operation fails with it. */
  private stopped: WireError | undefined;
  /** The checkpoint write in flight (at most one; it runs beside training). */
  private writing: Promise<void> = Promise.resolve();
  /** Why the last checkpoint write running beside training failed: the next operation fails with it. */
  private writeError: unknown;
  /** The newest checkpoint known to be stored: its step and first batch not in it (job/checkpoint tells the device). */
  durable: { step: number; nextIndex: number } | undefined;
  /** Steps skipped one after another for a non-finite loss or gradient. */
  private skippedInARow = 0;
  /**
   * Label-private: the training batch whose side output went to the device
   * and whose gradient is awaited (its layers are needed for the backward).
   * The next batch's side output waits for this step, so every side output
   * is computed with the weights a standard step would use.
   */
  private awaiting: { index: number; layers: Float32Array[]; rows: number; lengths: number[] | undefined; stepped: Promise<void>; release: () => void } | undefined;

  private constructor(
    readonly rec: JobRecord,
    private readonly store: Jobs,
    private readonly trainer: OnnxTrainer,
    readonly shape: SideNetworkShape,
  ) {
    this.nextIndex = rec.nextIndex;
  }

  /** Builds the job from its last checkpoint (or fresh weights, filled without holding the event loop); `shape` is jobShape of its config. */
  static async open(rec: JobRecord, store: Jobs, engine: OnnxEngine, head: OnnxHead | undefined, shape: SideNetworkShape): Promise<TrainingJob> {
    // Held-out results keyed by the device's evalIds: no prototype, so "__proto__" or "constructor" is just a name.
    rec.evals = Object.assign(Object.create(null) as JobRecord['evals'], rec.evals);
    let state: OptimizerState | undefined;
    let ckpt: Awaited<ReturnType<typeof readCheckpoint>>;
    const stored = await store.readCheckpoints(rec);
    for (const bytes of stored) if ((ckpt = await readCheckpoint(bytes, rec, shape))) break;
    if (stored.length > 0 && !ckpt) throw new WireError('STORAGE', 'no stored checkpoint of this job is readable; start a new job');
    const values = ckpt?.values ?? (await initialParametersAsync(shape, rec.config.seed));
    if (ckpt) {
      state = ckpt.state;
      rec.step = state.step;
      rec.nextIndex = ckpt.nextIndex;
      rec.trainTokens = ckpt.trainTokens;
    } else {
      rec.step = 0;
      rec.nextIndex = 0;
      rec.trainTokens = 0;
    }
    const trainer = new OnnxTrainer(engine, shape, head, values, { learningRate: rec.config.learningRate, warmupSteps: rec.config.warmupSteps, totalSteps: rec.config.totalSteps }, state);
    return new TrainingJob(rec, store, trainer, shape);
  }

  /** Moves the job to `to` and records it on disk; JOB_STATE when the transition is not allowed. */
  private async setState(to: JobState): Promise<void> {
    if (!canTransition(this.rec.state, to)) throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
    const was = this.rec.state;
    this.rec.state = to;
    try {
      await this.store.save(this.rec);
    } catch (err) {
      this.rec.state = was; // not stored: the job is as it was
      throw err;
    }
  }

  /** A cancelled job trains again (from its last checkpoint); a training job stays as it is. */
  async resume(): Promise<void> {
    if (this.rec.state !== 'training') await this.setState('training');
    // A label-private batch whose gradient never came (the device went away) is sent again.
    this.awaiting?.release();
    this.awaiting = undefined;
  }

  /** When an operation last asked for this job (the registry unloads jobs idle too long). */
  lastUsedAt = Date.now();

  /** The device session training this job: the last to create or resume it. Batches from any other are refused. */
  owner: object | undefined;

  /**
   * Label-private: refuses a gradient that cannot belong to the batch awaiting
   * it (rows, tokens, a loss sum no cross-entropy gives), leaving that batch
   * waiting for a valid one. `maxLossPerToken` bounds the loss sum per token.
   */
  checkGradient(index: number, rows: number, lossSum: number, tokens: number, maxLossPerToken: number): void {
    const pending = this.awaiting;
    if (!pending || pending.index !== index) return; // applyGradient answers these (resend, out of order)
    if (rows !== pending.rows || tokens > rows) throw new WireError('BAD_FRAME', `the gradient of batch ${index} must have its ${pending.rows} rows and at most that many tokens; the batch still waits for it`);
    if (!(lossSum >= 0 && lossSum <= tokens * maxLossPerToken)) {
      throw new WireError('BAD_FRAME', `the loss sum of batch ${index} must be from 0 to ${tokens} x ${maxLossPerToken.toFixed(1)}; the batch still waits for its gradient`);
    }
  }

  private run<T>(op: () => Promise<T> | T): Promise<T> {
    this.lastUsedAt = Date.now();
    const next = this.chain.then(() => {
      if (this.stopped) throw this.stopped;
      this.throwWriteError();
      return op();
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Refuses a batch the job cannot take now; true when it was trained already (a resend). */
  private checkIndex(index: number): boolean {
    if (this.rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
    if (index < this.nextIndex) return true;
    if (index > this.nextIndex) throw new WireError('OUT_OF_ORDER', `Expected batch ${this.nextIndex}, got ${index}.`);
    return false;
  }

  /** The acknowledgement of a batch that was trained already (a resend): nothing is trained again. */
  duplicateAck(index: number): TrainAck {
    return { index, step: this.trainer.step, loss: NaN, learningRate: 0, tokens: 0, duplicate: true, seconds: 0 };
  }

  train(index: number, batch: ActivationBatch): Promise<TrainAck> {
    return this.run(async () => {
      if (this.labelPrivate) throw new WireError('OUT_OF_ORDER', 'a label-private job takes batch/grad after batch/train');
      if (this.checkIndex(index)) return this.duplicateAck(index);
      if (!allFinite(batch.layers)) {
        this.nextIndex = index + 1; // skipped: the device's next batch is still in order
        throw new WireError('BAD_FRAME', `batch ${index} has NaN or infinite activations; it was skipped`);
      }
      const t0 = process.hrtime.bigint();
      return this.afterStep(index, await this.trainer.trainBatch(batch), t0);
    });
  }

  /** The side network attends within sequences: every batch must say its sequence lengths. */
  get attends(): boolean {
    return attentionBlocks(this.shape) > 0;
  }

  get labelPrivate(): boolean {
    return this.rec.config.labelPrivate === true;
  }

  /**
   * Label-private, first half of a step: the side network's output at the
   * join for training batch `index`, once the previous batch's step is done.
   * Undefined for a resend of a batch already trained.
   */
  async sideOutput(index: number, layers: Float32Array[], rows: number, lengths?: number[]): Promise<Float32Array | undefined> {
    if (!this.labelPrivate) throw new WireError('OUT_OF_ORDER', 'batch/grad belongs to label-private jobs');
    for (;;) {
      // Checked in arrival order, inside the job's queue; waited for outside it (the gradient comes through the same queue).
      const r = await this.run(async (): Promise<{ wait: Promise<void> } | { delta: Float32Array | undefined }> => {
        if (this.awaiting && this.awaiting.index < index) return { wait: this.awaiting.stepped };
        if (this.checkIndex(index)) return { delta: undefined };
        if (this.awaiting) throw new WireError('OUT_OF_ORDER', `batch ${index} was sent twice`);
        if (!allFinite(layers)) {
          this.nextIndex = index + 1;
          throw new WireError('BAD_FRAME', `batch ${index} has NaN or infinite activations; it was skipped`);
        }
        const delta = await this.trainer.sideDelta(layers, rows, lengths);
        let release = (): void => undefined;
        const stepped = new Promise<void>((resolve) => (release = resolve));
        this.awaiting = { index, layers, rows, lengths, stepped, release };
        return { delta };
      });
      if ('delta' in r) return r.delta;
      await r.wait;
    }
  }

  /** Label-private, second half: the device's loss and gradient at the join for the batch awaiting it; one optimizer step. */
  applyGradient(index: number, dy: Float32Array, lossSum: number, tokens: number): Promise<TrainAck> {
    return this.run(async () => {
      if (this.checkIndex(index)) return this.duplicateAck(index);
      const pending = this.awaiting;
      if (!pending || pending.index !== index) throw new WireError('OUT_OF_ORDER', `batch/grad ${index} without its batch/train`);
      if (dy.length !== pending.rows * this.shape.d || tokens > pending.rows) throw new WireError('BAD_FRAME', 'the gradient does not match its batch');
      this.awaiting = undefined;
      try {
        const t0 = process.hrtime.bigint();
        const finite = allFinite([dy]);
        return await this.afterStep(index, await this.trainer.upstreamStep(pending.layers, pending.rows, pending.lengths, dy, finite ? lossSum : NaN, tokens), t0);
      } finally {
        pending.release();
      }
    });
  }

  /** Label-private evaluation: the side network's output at the join for a held-out batch (the device computes the loss). */
  evalSide(layers: Float32Array[], rows: number, lengths?: number[]): Promise<Float32Array> {
    return this.run(async () => {
      if (!allFinite(layers)) throw new WireError('BAD_FRAME', 'the held-out batch has NaN or infinite activations');
      return this.trainer.sideDelta(layers, rows, lengths);
    });
  }

  /** What follows every step: the skip count, tokens, a checkpoint when due, the acknowledgement. */
  private async afterStep(index: number, r: StepResult, t0: bigint): Promise<TrainAck> {
    this.nextIndex = index + 1;
    if (r.skipped) {
      this.rec.skippedSteps = (this.rec.skippedSteps ?? 0) + 1;
      if (++this.skippedInARow >= MAX_SKIPPED_STEPS_IN_A_ROW) {
        const inARow = this.skippedInARow;
        this.skippedInARow = 0;
        await this.setState('cancelled'); // stopped: its last checkpoint stays resumable
        throw new WireError('NON_FINITE', `${inARow} steps in a row gave a non-finite loss or gradient; training stopped (resume from the last checkpoint with a lower learning rate)`);
      }
    } else {
      this.skippedInARow = 0;
      this.rec.trainTokens += r.tokens;
    }
    const every = Math.max(1, this.rec.config.checkpointEvery);
    // Encoded now (the weights of this step); stored beside the next steps, off the training path.
    if (this.trainer.step % every === 0) await this.checkpointNow(false);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return { index, step: r.step, loss: r.skipped ? 0 : r.loss, learningRate: r.learningRate, tokens: r.skipped ? 0 : r.tokens, duplicate: false, seconds, skipped: r.skipped };
  }

  evaluate(evalId: string, batch: ActivationBatch): Promise<{ lossSum: number; tokens: number }> {
    return this.run(async () => {
      if (!allFinite(batch.layers)) throw new WireError('BAD_FRAME', 'the held-out batch has NaN or infinite activations');
      const r = await this.trainer.evalBatch(batch);
      const acc = this.rec.evals[evalId] ?? { lossSum: 0, tokens: 0 };
      delete this.rec.evals[evalId];
      this.rec.evals[evalId] = { lossSum: acc.lossSum + r.lossSum, tokens: acc.tokens + r.tokens };
      const ids = Object.keys(this.rec.evals);
      for (const old of ids.slice(0, Math.max(0, ids.length - MAX_EVALS_PER_JOB))) delete this.rec.evals[old];
      return r;
    });
  }

  /** Fails with the error of a checkpoint write that ran beside training, once. */
  private throwWriteError(): void {
    const err = this.writeError;
    this.writeError = undefined;
    if (err !== undefined) throw err;
  }

  /**
   * Encodes a checkpoint of the weights as they are now and stores it after
   * the write before it (one at a time). `wait`: return once it is stored (a
   * failure throws); otherwise it is stored beside training and a failure
   * fails the job's next operation.
   */
  private async checkpointNow(wait = true): Promise<void> {
    await this.writing;
    this.throwWriteError();
    const values = this.trainer.values();
    const opt = this.trainer.exportState();
    const tensors = parameterNames(this.shape).flatMap((n) => {
      const dims = parameterShape(this.shape, n);
      return [
        { name: n, shape: dims, data: values.get(n)! },
        { name: `adam.m.${n}`, shape: dims, data: opt.m.get(n)! },
        { name: `adam.v.${n}`, shape: dims, data: opt.v.get(n)! },
      ];
    });
    const meta = { kind: 'checkpoint', step: this.trainer.step, nextIndex: this.nextIndex, trainTokens: this.rec.trainTokens };
    const bytes = await encodeAdapterSliced(this.rec.model.fingerprint, adapterConfig(this.shape, this.rec.model, this.rec.config), meta, tensors);
    const { step, nextIndex } = meta;
    const write = (async () => {
      await storing('a checkpoint', () => this.store.writeCheckpoint(this.rec, bytes));
      this.rec.step = step;
      this.rec.nextIndex = nextIndex;
      await storing('the job record', () => this.store.save(this.rec));
      this.durable = { step, nextIndex };
    })();
    this.writing = write.then(
      () => undefined,
      (err: unknown) => {
        if (!wait) this.writeError ??= err;
      },
    );
    if (wait) await write;
  }

  /** A new job's starting values from the device's backbone (backboneInitNames), kept as its step-0 checkpoint so a resume starts there too. */
  startFrom(values: Map<string, Float32Array>): Promise<void> {
    return this.run(async () => {
      this.trainer.setStartValues(values);
      await this.checkpointNow();
    });
  }

  /** Checkpoints now (graceful shutdown, cancel). */
  checkpoint(): Promise<void> {
    return this.run(() => this.checkpointNow());
  }

  /** Final checkpoint and adapter file; the job becomes finished. */
  finish(): Promise<Buffer> {
    return this.run(async () => {
      if (this.rec.state === 'finished') return (await this.store.readAdapter(this.rec))!;
      if (this.rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
      await this.checkpointNow();
      const values = this.trainer.values();
      const tensors = parameterNames(this.shape).map((n) => ({ name: n, shape: parameterShape(this.shape, n), data: values.get(n)! }));
      try {
        checkSideNetworkTensors(this.shape, new Map(tensors.map((t) => [t.name, t])));
      } catch {
        throw new WireError('INTERNAL', 'the trained weights are not finite numbers; no adapter was written (resume from an earlier checkpoint with a lower learning rate)');
      }
      const meta = { kind: 'adapter', steps: this.trainer.step, trainTokens: this.rec.trainTokens, evals: this.rec.evals, finishedAt: new Date().toISOString() };
      const bytes = await encodeAdapterSliced(this.rec.model.fingerprint, adapterConfig(this.shape, this.rec.model, this.rec.config), meta, tensors);
      await storing('the adapter', () => this.store.writeAdapter(this.rec, bytes));
      await this.setState('finished');
      return bytes;
    });
  }

  cancel(): Promise<void> {
    return this.run(async () => {
      if (this.rec.state !== 'training') return;
      await this.checkpointNow();
      await this.setState('cancelled');
    });
  }

  get step(): number {
    return this.trainer.step;
  }

  /** Waits for queued work; later operations fail with JOB_STATE. With a `reason`, queued work not yet started fails with it too. */
  async dispose(reason?: WireError): Promise<void> {
    if (reason) this.stopped ??= reason;
    await this.chain;
    await this.writing;
    this.stopped ??= new WireError('JOB_STATE', 'The job was stopped.');
    this.trainer.dispose();
  }
}

/**
 * Runs a write to the server's store; a failure is a typed STORAGE error that
 * says what is kept, except the store's failures that mean something else to
 * the device (the lease lost: JOB_ELSEWHERE; the database gone:
 * STORE_UNAVAILABLE), which pass as their wire errors.
 */
async function storing(what: string, write: () => void | Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    const wire = wireErrorOf(err);
    if (wire && wire.code !== 'STORAGE') throw wire;
    throw new WireError('STORAGE', `the server could not store ${what} (is its disk full?); what it stored before is kept`);
  }
}

/** Whether every activation of the batch is a finite number (NaN or Inf would poison the weights). */
function allFinite(arrays: Float32Array[]): boolean {
  for (const layer of arrays) {
    for (let i = 0; i < layer.length; i++) if (!Number.isFinite(layer[i]!)) return false;
  }
  return true;
}
