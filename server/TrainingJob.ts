import { canTransition, JobState } from '../common/JobState';
import { MAX_EVALS_PER_JOB } from '../common/limits';
import { WireError } from '../common/WireError';
import { jobKey, JobRecord } from './storage/records';
import { wireErrorOf } from './wireErrorOf';
import type { Jobs } from './storage/Store';
import type { EncodedBatch, JobTrainer, Trainers } from './training/JobTrainer';
import type { StepResult } from './training/onnx/OnnxTrainer';
import { attentionBlocks, SideNetworkShape } from './training/sideNetworkSpec';

/** Who trains a job: the device session that created or last resumed it. */
export interface JobOwner {
  /** An operation of job `jobId` waits for its training worker behind `ahead` of other jobs. */
  jobWaiting(jobId: string, ahead: number): void;
}

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
  private awaiting: { index: number; rows: number; stepped: Promise<void>; release: () => void } | undefined;

  private constructor(
    readonly rec: JobRecord,
    private readonly store: Jobs,
    private readonly trainer: JobTrainer,
    readonly shape: SideNetworkShape,
  ) {
    this.nextIndex = rec.nextIndex;
    // A job waiting for its training worker tells its device, which sees why its credits come back slowly.
    trainer.onWaiting = (ahead) => this.owner?.jobWaiting(rec.id, ahead);
  }

  /**
   * Builds the job from its last checkpoint (or fresh weights) on `trainers`
   * (a worker of the server's pool): the stored checkpoints are read here and
   * decoded where the job trains. `shape` is jobShape of its config;
   * `headKey` names its model head (standard mode), loaded by the caller.
   */
  static async open(rec: JobRecord, store: Jobs, trainers: Trainers, shape: SideNetworkShape, headKey?: string): Promise<TrainingJob> {
    // Held-out results keyed by the device's evalIds: no prototype, so "__proto__" or "constructor" is just a name.
    rec.evals = Object.assign(Object.create(null) as JobRecord['evals'], rec.evals);
    const checkpoints = await store.readCheckpoints(rec);
    const opened = await trainers.open({ job: jobKey(rec), user: rec.user, spec: { shape, model: rec.model, config: rec.config }, ...(headKey !== undefined ? { headKey } : {}), checkpoints });
    if ('unreadable' in opened) throw new WireError('STORAGE', 'no stored checkpoint of this job is readable; start a new job');
    rec.step = opened.from?.step ?? 0;
    rec.nextIndex = opened.from?.nextIndex ?? 0;
    rec.trainTokens = opened.from?.trainTokens ?? 0;
    return new TrainingJob(rec, store, opened.trainer, shape);
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
    await this.trainer.forgetPending();
  }

  /** When an operation last asked for this job (the registry unloads jobs idle too long). */
  lastUsedAt = Date.now();

  /** The device session training this job: the last to create or resume it. Batches from any other are refused. */
  owner: JobOwner | undefined;

  /** The trainer's thread stopped: the job is opened again from its last checkpoint (JobRegistry.load). */
  get trainerLost(): boolean {
    return this.trainer.lost === true;
  }

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

  /** A standard-mode training batch, as the device encoded it (decoded and checked where the job trains). */
  train(index: number, batch: EncodedBatch): Promise<TrainAck> {
    return this.run(async () => {
      if (this.labelPrivate) throw new WireError('OUT_OF_ORDER', 'a label-private job takes batch/grad after batch/train');
      if (this.checkIndex(index)) return this.duplicateAck(index);
      const t0 = process.hrtime.bigint();
      const r = await this.trainer.train(batch);
      if (r === 'nonFinite') {
        this.nextIndex = index + 1; // skipped: the device's next batch is still in order
        throw new WireError('BAD_FRAME', `batch ${index} has NaN or infinite activations; it was skipped`);
      }
      return this.afterStep(index, r, t0);
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
   * join for training batch `index` (quantized at the join's bits), once the
   * previous batch's step is done. Undefined for a resend of a batch already trained.
   */
  async sideOutput(index: number, batch: EncodedBatch): Promise<Uint8Array | undefined> {
    if (!this.labelPrivate) throw new WireError('OUT_OF_ORDER', 'batch/grad belongs to label-private jobs');
    for (;;) {
      // Checked in arrival order, inside the job's queue; waited for outside it (the gradient comes through the same queue).
      const r = await this.run(async (): Promise<{ wait: Promise<void> } | { delta: Uint8Array | undefined }> => {
        if (this.awaiting && this.awaiting.index < index) return { wait: this.awaiting.stepped };
        if (this.checkIndex(index)) return { delta: undefined };
        if (this.awaiting) throw new WireError('OUT_OF_ORDER', `batch ${index} was sent twice`);
        const delta = await this.trainer.sideOutput(batch, index);
        if (delta === 'nonFinite') {
          this.nextIndex = index + 1;
          throw new WireError('BAD_FRAME', `batch ${index} has NaN or infinite activations; it was skipped`);
        }
        let release = (): void => undefined;
        const stepped = new Promise<void>((resolve) => (release = resolve));
        this.awaiting = { index, rows: batch.rows, stepped, release };
        return { delta };
      });
      if ('delta' in r) return r.delta;
      await r.wait;
    }
  }

  /**
   * Label-private, second half: the device's loss and gradient at the join
   * (quantized at the join's bits, `rows` rows) for the batch awaiting it;
   * one optimizer step.
   */
  applyGradient(index: number, rows: number, dy: Uint8Array, lossSum: number, tokens: number): Promise<TrainAck> {
    return this.run(async () => {
      if (this.checkIndex(index)) return this.duplicateAck(index);
      const pending = this.awaiting;
      if (!pending || pending.index !== index) throw new WireError('OUT_OF_ORDER', `batch/grad ${index} without its batch/train`);
      if (rows !== pending.rows || tokens > pending.rows) throw new WireError('BAD_FRAME', 'the gradient does not match its batch');
      this.awaiting = undefined;
      try {
        const t0 = process.hrtime.bigint();
        return await this.afterStep(index, await this.trainer.upstreamStep(index, dy, lossSum, tokens), t0);
      } finally {
        pending.release();
      }
    });
  }

  /** Label-private evaluation: the side network's output at the join for a held-out batch, quantized (the device computes the loss). */
  evalSide(batch: EncodedBatch): Promise<Uint8Array> {
    return this.run(async () => (await this.trainer.sideOutput(batch)) as Uint8Array);
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

  evaluate(evalId: string, batch: EncodedBatch): Promise<{ lossSum: number; tokens: number }> {
    return this.run(async () => {
      const r = await this.trainer.evaluate(batch);
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
    const meta = { kind: 'checkpoint', step: this.trainer.step, nextIndex: this.nextIndex, trainTokens: this.rec.trainTokens };
    // Encoded where the job trains; a checkpoint is written whatever its numbers (only the adapter is checked).
    const bytes = (await this.trainer.encode('checkpoint', meta)) as Uint8Array;
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
      await this.trainer.setStartValues(values);
      await this.checkpointNow();
    });
  }

  /**
   * Checkpoints now (graceful shutdown, cancel). Not a label-private job with
   * a head update: the device holds that half and snapshots it at the job's
   * checkpoint steps only, so the job keeps its last one of those.
   */
  checkpoint(): Promise<void> {
    if (this.labelPrivate && (this.rec.config.headRank ?? 0) > 0) return Promise.resolve();
    return this.run(() => this.checkpointNow());
  }

  /** Final checkpoint and adapter file; the job becomes finished. */
  finish(): Promise<Uint8Array> {
    return this.run(async () => {
      if (this.rec.state === 'finished') return (await this.store.readAdapter(this.rec))!;
      if (this.rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
      await this.checkpointNow();
      const meta = { kind: 'adapter', steps: this.trainer.step, trainTokens: this.rec.trainTokens, evals: { ...this.rec.evals }, finishedAt: new Date().toISOString() };
      const bytes = await this.trainer.encode('adapter', meta);
      if (bytes === 'nonFinite') throw new WireError('INTERNAL', 'the trained weights are not finite numbers; no adapter was written (resume from an earlier checkpoint with a lower learning rate)');
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
    await this.trainer.dispose();
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
