import { bytesPerRow, joinBits } from '../common/ActivationQuantizer';
import { batchPayloadBytes } from '../common/batchPayload';
import { MAX_EVAL_ID_CHARS } from '../common/limits';
import { DeviceMessage, ServerMessage } from '../common/messages';
import { WireError } from '../common/WireError';
import { SessionContext } from './SessionContext';
import type { EncodedBatch } from './training/JobTrainer';
import { TrainAck, TrainingJob } from './TrainingJob';

/**
 * Largest loss per token a label-private device may report, as a multiple of
 * ln(vocabulary) (uniform guessing). Generous: a model with random weights
 * really reports about 16x (Qwen2.5-0.5B's shape: 196 nats per token); the
 * bound only keeps numbers no cross-entropy gives out of the job's records.
 */
export const MAX_LOSS_PER_TOKEN_OVER_UNIFORM = 100;

/** What the batch handlers need of their device session. */
export interface BatchSession {
  readonly ctx: SessionContext;
  send(message: ServerMessage, payload?: Uint8Array): void;
  fail(err: unknown, jobId?: string): void;
  /** The job, loaded, that this session trains (JOB_STATE otherwise). */
  trainingJob(id: string): Promise<TrainingJob>;
  /** The job, loaded, for a held-out batch (a finished job too), and whether it was loaded for this batch only. */
  evalJob(id: string): Promise<{ job: TrainingJob; onlyForThis: boolean }>;
}

/**
 * One session's batches: training, held-out and label-private gradients,
 * under its credits. Every batch, held-out ones included, holds a credit
 * until it is answered, so decoded batches waiting in the server are bounded
 * by credits per session.
 */
export class JobBatches {
  private inFlight = 0;
  /** Label-private batches of this session whose side output was sent and whose gradient holds their credit ("jobId:index"). */
  private readonly awaitingGrad = new Set<string>();
  /** The step of the last stored checkpoint announced per job (job/checkpoint). */
  private readonly announced = new Map<string, number>();

  constructor(private readonly s: BatchSession) {}

  /** Takes one of this session's credits, or refuses the batch (NO_CREDIT). */
  private takeCredit(): void {
    const { credits } = this.s.ctx.limits;
    if (this.inFlight >= credits) throw new WireError('NO_CREDIT', `at most ${credits} unanswered batches (training and held-out)`);
    this.inFlight++;
  }

  /** Runs `body` under a credit; the credit returns when it settles, unless `body` keeps it (label-private batches awaiting a gradient). */
  private async withCredit(jobId: string, body: () => Promise<'keep' | void>): Promise<void> {
    this.takeCredit();
    let keep = false;
    try {
      keep = (await body()) === 'keep';
    } catch (err) {
      this.s.fail(err, jobId);
    } finally {
      if (!keep) this.inFlight--;
    }
  }

  /**
   * A batch as the device encoded it, its size checked here (BAD_FRAME); it is
   * decoded where the job trains. `labels`: the standard mode's targets and mask follow the layers.
   */
  private batchOf(job: TrainingJob, rows: number, payload: Buffer, lengths: number[] | undefined, labels: boolean): EncodedBatch {
    const c = job.rec.config;
    if (rows < 1 || rows > c.seqLen * c.batchSize) throw new WireError('BAD_FRAME', 'rows out of range for the job');
    const expected = batchPayloadBytes(rows, c.tappedLayers.length, job.rec.model.hiddenSize, c.bits, labels);
    if (payload.length !== expected) throw new WireError('BAD_FRAME', `batch payload has ${payload.length} bytes, expected ${expected} for ${rows} rows`);
    const checked = JobBatches.lengthsOf(job, rows, lengths);
    return { payload, rows, ...(checked ? { lengths: checked } : {}) };
  }

  /** A batch's sequence lengths, checked where the job's side network attends within sequences (ignored elsewhere). */
  private static lengthsOf(job: TrainingJob, rows: number, lengths: number[] | undefined): number[] | undefined {
    if (!job.attends) return undefined;
    const c = job.rec.config;
    if (!lengths || lengths.length < 1 || lengths.length > c.batchSize || lengths.some((x) => x < 1 || x > c.seqLen) || lengths.reduce((a, b) => a + b, 0) !== rows) {
      throw new WireError('BAD_FRAME', `this job needs the batch's sequence lengths: 1 to ${c.batchSize} of them, each 1 to ${c.seqLen}, summing to rows`);
    }
    return lengths;
  }

  private sendAck(job: TrainingJob, jobId: string, ack: TrainAck): void {
    const { metrics } = this.s.ctx;
    if (!ack.duplicate) {
      metrics.steps.inc();
      metrics.tokens.inc(ack.tokens);
      metrics.tokensPerSecond.set(ack.tokens / Math.max(ack.seconds, 1e-9));
    }
    this.s.send({ type: 'batch/ack', jobId, index: ack.index, step: ack.step, loss: Number.isFinite(ack.loss) ? ack.loss : 0, learningRate: ack.learningRate, tokens: ack.tokens, seconds: ack.seconds, ...(ack.skipped ? { skipped: true } : {}) });
    // A checkpoint is announced once it is stored (its write runs beside training).
    const durable = job.durable;
    if (durable && this.announced.get(jobId) !== durable.step) {
      this.announced.set(jobId, durable.step);
      this.s.send({ type: 'job/checkpoint', jobId, step: durable.step, nextIndex: durable.nextIndex });
    }
  }

  onTrain(m: DeviceMessage<'batch/train'>, payload: Buffer): Promise<void> {
    return this.withCredit(m.jobId, async () => {
      const job = await this.s.trainingJob(m.jobId);
      if (job.labelPrivate) return this.trainLabelPrivate(job, m, payload);
      this.sendAck(job, m.jobId, await job.train(m.index, this.batchOf(job, m.rows, payload, m.lengths, true)));
    });
  }

  /** Label-private: the side output goes back; the batch keeps its credit until its gradient is applied (batch/grad). */
  private async trainLabelPrivate(job: TrainingJob, m: DeviceMessage<'batch/train'>, payload: Buffer): Promise<'keep' | void> {
    const delta = await job.sideOutput(m.index, this.batchOf(job, m.rows, payload, m.lengths, false));
    if (!delta) return this.sendAck(job, m.jobId, job.duplicateAck(m.index));
    this.awaitingGrad.add(`${m.jobId}:${m.index}`);
    this.s.send({ type: 'batch/side', jobId: m.jobId, index: m.index, rows: m.rows }, delta);
    return 'keep';
  }

  async onGrad(m: DeviceMessage<'batch/grad'>, payload: Buffer): Promise<void> {
    const key = `${m.jobId}:${m.index}`;
    const job = await this.s.trainingJob(m.jobId);
    if (!job.labelPrivate) throw new WireError('OUT_OF_ORDER', 'batch/grad belongs to label-private jobs');
    const d = job.rec.model.hiddenSize;
    const bits = joinBits(job.rec.config.bits);
    if (m.rows < 1 || m.rows > job.rec.config.seqLen * job.rec.config.batchSize || payload.length !== m.rows * bytesPerRow(d, bits)) {
      throw new WireError('BAD_FRAME', 'the gradient payload does not match its rows');
    }
    // Only a gradient this session was sent a side output for returns a credit; a refused one leaves the batch waiting for a valid one.
    if (!this.awaitingGrad.has(key)) throw new WireError('OUT_OF_ORDER', `batch/grad ${m.index} without its batch/side`);
    job.checkGradient(m.index, m.rows, m.lossSum, m.tokens, MAX_LOSS_PER_TOKEN_OVER_UNIFORM * Math.log(job.rec.model.vocabularySize));
    this.awaitingGrad.delete(key);
    try {
      this.sendAck(job, m.jobId, await job.applyGradient(m.index, m.rows, payload, m.lossSum, m.tokens));
    } finally {
      this.inFlight--;
    }
  }

  onEval(m: DeviceMessage<'batch/eval'>, payload: Buffer): Promise<void> {
    if (m.evalId.length > MAX_EVAL_ID_CHARS) throw new WireError('BAD_FRAME', `evalId is at most ${MAX_EVAL_ID_CHARS} characters`);
    return this.withCredit(m.jobId, async () => {
      const { job, onlyForThis } = await this.s.evalJob(m.jobId);
      try {
        if (job.labelPrivate) {
          const delta = await job.evalSide(this.batchOf(job, m.rows, payload, m.lengths, false));
          this.s.send({ type: 'eval/side', jobId: m.jobId, evalId: m.evalId, index: m.index, rows: m.rows }, delta);
          return;
        }
        const r = await job.evaluate(m.evalId, this.batchOf(job, m.rows, payload, m.lengths, true));
        this.s.send({ type: 'eval/result', jobId: m.jobId, evalId: m.evalId, index: m.index, lossSum: r.lossSum, tokens: r.tokens });
      } finally {
        if (onlyForThis) await this.s.ctx.registry.unload(job); // loaded only for this evaluation
      }
    });
  }
}
