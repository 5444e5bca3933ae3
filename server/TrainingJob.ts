import { decodeAdapter, encodeAdapter } from '../common/AdapterFile';
import { canTransition, JobState } from '../common/JobState';
import { ActivationBatch } from '../common/batchPayload';
import { WireError } from '../common/WireError';
import { JobRecord, JobStore } from './storage/JobStore';
import { OnnxEngine } from './training/onnx/OnnxEngine';
import { OnnxHead } from './training/onnx/OnnxHead';
import { OnnxTrainer } from './training/onnx/OnnxTrainer';
import { adapterConfig, initialParameters, parameterNames, parameterShape, sideShape, SideNetworkShape } from './training/sideNetworkSpec';
import { OptimizerState } from './training/TrainerOptions';

export interface TrainAck {
  index: number;
  step: number;
  loss: number;
  learningRate: number;
  tokens: number;
  /** True when the batch had been trained already (resent after a drop): not trained again. */
  duplicate: boolean;
  checkpointed: boolean;
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
  private disposed = false;

  private constructor(
    readonly rec: JobRecord,
    private readonly store: JobStore,
    private readonly trainer: OnnxTrainer,
    readonly shape: SideNetworkShape,
  ) {
    this.nextIndex = rec.nextIndex;
  }

  /** Builds the job from its last checkpoint (or fresh weights). */
  static open(rec: JobRecord, store: JobStore, engine: OnnxEngine, head: OnnxHead): TrainingJob {
    const shape = sideShape(rec.model.hiddenSize, rec.config.reduction, rec.config.tappedLayers);
    let values = initialParameters(shape, rec.config.seed);
    let state: OptimizerState | undefined;
    const ckpt = store.readCheckpoint(rec);
    if (ckpt) {
      const { header, tensors } = decodeAdapter(ckpt, rec.model.fingerprint);
      values = new Map(parameterNames(shape).map((n) => [n, tensors.get(n)!.data]));
      state = {
        step: Number(header.meta.step),
        m: new Map(parameterNames(shape).map((n) => [n, tensors.get(`adam.m.${n}`)!.data])),
        v: new Map(parameterNames(shape).map((n) => [n, tensors.get(`adam.v.${n}`)!.data])),
      };
      rec.step = state.step;
      rec.nextIndex = Number(header.meta.nextIndex);
      rec.trainTokens = Number(header.meta.trainTokens ?? 0);
    } else {
      rec.step = 0;
      rec.nextIndex = 0;
      rec.trainTokens = 0;
    }
    const trainer = new OnnxTrainer(engine, shape, head, values, { learningRate: rec.config.learningRate, warmupSteps: rec.config.warmupSteps, totalSteps: rec.config.totalSteps }, state);
    return new TrainingJob(rec, store, trainer, shape);
  }

  /** Moves the job to `to` and records it on disk; JOB_STATE when the transition is not allowed. */
  private setState(to: JobState): void {
    if (!canTransition(this.rec.state, to)) throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
    this.rec.state = to;
    this.store.save(this.rec);
  }

  /** A cancelled job trains again (from its last checkpoint); a training job stays as it is. */
  resume(): void {
    if (this.rec.state !== 'training') this.setState('training');
  }

  private run<T>(op: () => Promise<T> | T): Promise<T> {
    const next = this.chain.then(() => {
      if (this.disposed) throw new WireError('JOB_STATE', 'The job was stopped.');
      return op();
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  train(index: number, batch: ActivationBatch): Promise<TrainAck> {
    return this.run(async () => {
      if (this.rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
      if (index < this.nextIndex) {
        return { index, step: this.trainer.step, loss: NaN, learningRate: 0, tokens: 0, duplicate: true, checkpointed: false, seconds: 0 };
      }
      if (index > this.nextIndex) throw new WireError('OUT_OF_ORDER', `Expected batch ${this.nextIndex}, got ${index}.`);
      if (!allFinite(batch)) {
        this.nextIndex = index + 1; // skipped: the device's next batch is still in order
        throw new WireError('BAD_FRAME', `batch ${index} has NaN or infinite activations; it was skipped`);
      }
      const t0 = process.hrtime.bigint();
      const r = await this.trainer.trainBatch(batch);
      this.nextIndex = index + 1;
      this.rec.trainTokens += r.tokens;
      const every = Math.max(1, this.rec.config.checkpointEvery);
      const checkpointed = this.trainer.step % every === 0;
      if (checkpointed) await this.checkpointNow();
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      return { index, step: r.step, loss: r.loss, learningRate: r.learningRate, tokens: r.tokens, duplicate: false, checkpointed, seconds };
    });
  }

  evaluate(evalId: string, batch: ActivationBatch): Promise<{ lossSum: number; tokens: number }> {
    return this.run(async () => {
      if (!allFinite(batch)) throw new WireError('BAD_FRAME', 'the held-out batch has NaN or infinite activations');
      const r = await this.trainer.evalBatch(batch);
      const acc = this.rec.evals[evalId] ?? { lossSum: 0, tokens: 0 };
      this.rec.evals[evalId] = { lossSum: acc.lossSum + r.lossSum, tokens: acc.tokens + r.tokens };
      return r;
    });
  }

  private async checkpointNow(): Promise<void> {
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
    this.store.writeCheckpoint(this.rec, encodeAdapter(this.rec.model.fingerprint, adapterConfig(this.shape, this.rec.model, this.rec.config), meta, tensors));
    this.rec.step = this.trainer.step;
    this.rec.nextIndex = this.nextIndex;
    this.store.save(this.rec);
  }

  /** Checkpoints now (graceful shutdown, cancel). */
  checkpoint(): Promise<void> {
    return this.run(() => this.checkpointNow());
  }

  /** Final checkpoint and adapter file; the job becomes finished. */
  finish(): Promise<Buffer> {
    return this.run(async () => {
      if (this.rec.state === 'finished') return this.store.readAdapter(this.rec)!;
      if (this.rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${this.rec.state}.`);
      await this.checkpointNow();
      const values = this.trainer.values();
      const tensors = parameterNames(this.shape).map((n) => ({ name: n, shape: parameterShape(this.shape, n), data: values.get(n)! }));
      const meta = { kind: 'adapter', steps: this.trainer.step, trainTokens: this.rec.trainTokens, evals: this.rec.evals, finishedAt: new Date().toISOString() };
      const bytes = encodeAdapter(this.rec.model.fingerprint, adapterConfig(this.shape, this.rec.model, this.rec.config), meta, tensors);
      this.store.writeAdapter(this.rec, bytes);
      this.setState('finished');
      return bytes;
    });
  }

  cancel(): Promise<void> {
    return this.run(async () => {
      if (this.rec.state !== 'training') return;
      await this.checkpointNow();
      this.setState('cancelled');
    });
  }

  get step(): number {
    return this.trainer.step;
  }

  /** Waits for queued work; later operations fail with JOB_STATE. */
  async dispose(): Promise<void> {
    await this.chain;
    this.disposed = true;
  }
}

/** Whether every activation of the batch is a finite number (NaN or Inf would poison the weights). */
function allFinite(batch: ActivationBatch): boolean {
  for (const layer of batch.layers) {
    for (let i = 0; i < layer.length; i++) if (!Number.isFinite(layer[i]!)) return false;
  }
  return true;
}
