import type { ResolvedJobSettings } from '../../../common/jobSettings';

export type JobPhase = 'scanning' | 'connecting' | 'uploading-head' | 'evaluating' | 'training' | 'downloading' | 'done' | 'failed' | 'cancelled';

/** What a host shows of a running job. */
export interface JobProgress {
  phase: JobPhase;
  jobId?: string;
  /** The job's settings, a resumed job's own (not today's host settings); set once the job knows them. */
  settings?: ResolvedJobSettings;
  step: number;
  totalSteps: number;
  sequencesDone: number;
  tokensDone: number;
  trainLoss?: number;
  heldOutLossBefore?: number;
  heldOutLossAfter?: number;
  /** Backbone forward tokens per second on this device (training batches). */
  deviceTokensPerSecond: number;
  bytesSent: number;
  etaSeconds?: number;
  deviceRssBytes: number;
  /** Loss history [step, loss] for charts. */
  lossHistory: [number, number][];
  /** The server said this job's next step waits behind this many operations of other jobs (cleared by the next step). */
  serverQueueAhead?: number;
}

/** Where the tracker reads the numbers it does not count itself. */
export interface ProgressSources {
  /** Bytes this job has sent so far, over every connection. */
  bytesSent(): number;
  /** Seconds the backbone has spent on training forwards, and the tokens it ran (sequences from the activation cache are not run). */
  deviceForwardSeconds(): number;
  deviceForwardTokens(): number;
}

/**
 * A job's progress: the phase, counters, losses and the ETA of the training
 * phase (from the pace of the steps acknowledged since training last
 * started, so a resumed job does not count steps done before). Reports a
 * copy to the host at each change.
 */
export class ProgressTracker {
  private readonly p: JobProgress = { phase: 'scanning', step: 0, totalSteps: 0, sequencesDone: 0, tokensDone: 0, deviceTokensPerSecond: 0, bytesSent: 0, deviceRssBytes: 0, lossHistory: [] };
  private trainStartedAt = 0;
  private stepsAtTrainStart = 0;

  constructor(
    private readonly sources: ProgressSources,
    private readonly onProgress: ((p: JobProgress) => void) | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  get phase(): JobPhase {
    return this.p.phase;
  }

  /** The numbers as they stand (read-only view). */
  get current(): Readonly<JobProgress> {
    return this.p;
  }

  setSettings(settings: ResolvedJobSettings): void {
    this.p.settings = { ...settings };
  }

  setPhase(phase: JobPhase): void {
    this.p.phase = phase;
    this.emit();
  }

  setTotalSteps(totalSteps: number): void {
    this.p.totalSteps = totalSteps;
  }

  setJobId(jobId: string | undefined): void {
    this.p.jobId = jobId;
  }

  setLosses(before: number | undefined, after: number | undefined): void {
    this.p.heldOutLossBefore = before;
    this.p.heldOutLossAfter = after;
  }

  /** The server's step count when a session (re)starts. */
  setStep(step: number): void {
    this.p.step = step;
  }

  /** Training (re)starts now at the current step: the ETA measures from here. */
  startTraining(): void {
    this.trainStartedAt = this.now();
    this.stepsAtTrainStart = this.p.step;
  }

  /** A batch of `sequences` sequences and `rows` predicted tokens left for the server. */
  batchSent(sequences: number, rows: number): void {
    this.p.sequencesDone += sequences;
    this.p.tokensDone += rows;
  }

  /** The server said the job's next step waits for its training worker behind `ahead` operations of other jobs. */
  serverBusy(ahead: number): void {
    this.p.serverQueueAhead = ahead;
    this.emit();
  }

  /** The server applied a step. */
  stepAcknowledged(step: number, loss: number): void {
    delete this.p.serverQueueAhead;
    this.p.step = step;
    this.p.trainLoss = loss;
    this.p.lossHistory.push([step, loss]);
    this.emit();
  }

  emit(): void {
    const p = this.p;
    p.bytesSent = this.sources.bytesSent();
    p.deviceRssBytes = process.memoryUsage().rss;
    const forward = this.sources.deviceForwardSeconds();
    p.deviceTokensPerSecond = forward > 0 ? this.sources.deviceForwardTokens() / forward : 0;
    const done = p.step - this.stepsAtTrainStart;
    if (p.phase === 'training' && done > 0) {
      p.etaSeconds = ((this.now() - this.trainStartedAt) / 1000 / done) * (p.totalSteps - p.step);
    }
    this.onProgress?.({ ...p, lossHistory: p.lossHistory });
  }
}
