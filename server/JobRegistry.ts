import type { ModelSpec } from '../common/messages';
import { HeadStore } from './storage/HeadStore';
import { JobRecord, JobStore } from './storage/JobStore';
import { OnnxEngine } from './training/onnx/OnnxEngine';
import { OnnxHead } from './training/onnx/OnnxHead';
import { TrainingJob } from './TrainingJob';

/**
 * The jobs and model heads this server holds in memory. A job is loaded from
 * its last checkpoint the first time a session asks for it and unloaded when
 * it finishes, is cancelled or the server stops; a model's frozen head is
 * loaded once and shared by every loaded job of that model.
 */
export class JobRegistry {
  private readonly jobs = new Map<string, TrainingJob>();
  private readonly heads = new Map<string, { head: OnnxHead; users: number }>();

  constructor(
    private readonly engine: OnnxEngine,
    private readonly jobStore: JobStore,
    private readonly headStore: HeadStore,
    /** Called with the number of loaded jobs whenever it changes. */
    private readonly onLoadedJobsChanged: (count: number) => void = () => undefined,
  ) {}

  /** Jobs loaded now. */
  get size(): number {
    return this.jobs.size;
  }

  /** The loaded job for a record (from its checkpoint when not in memory). */
  load(rec: JobRecord): TrainingJob {
    const key = keyOf(rec);
    let job = this.jobs.get(key);
    if (!job) {
      // A label-private job needs no head: the device computes the loss with its own.
      job = TrainingJob.open(rec, this.jobStore, this.engine, rec.config.labelPrivate ? undefined : this.acquireHead(rec.model));
      this.jobs.set(key, job);
      this.onLoadedJobsChanged(this.jobs.size);
    }
    return job;
  }

  /** Whether the job of `rec` is in memory now. */
  isLoaded(rec: JobRecord): boolean {
    return this.jobs.has(keyOf(rec));
  }

  /** Jobs of `user` loaded and training now. */
  trainingJobsOf(user: string): number {
    return [...this.jobs.values()].filter((j) => j.rec.user === user && j.rec.state === 'training').length;
  }

  /** Waits for the job's queued work, frees it, and releases its head. */
  async unload(job: TrainingJob): Promise<void> {
    const key = keyOf(job.rec);
    if (this.jobs.get(key) !== job) return;
    this.jobs.delete(key);
    this.onLoadedJobsChanged(this.jobs.size);
    await job.dispose();
    if (!job.rec.config.labelPrivate) this.releaseHead(headKeyOf(job.rec.model));
  }

  /** Checkpoints the training jobs of `user` (or of everyone) and unloads them. Returns how many checkpoints failed. */
  async unloadUser(user: string): Promise<number> {
    return this.unloadWhere((job) => job.rec.user === user);
  }

  /** Checkpoints and unloads the jobs no one has used for `maxIdleMs` (their memory and head go back). Returns how many checkpoints failed. */
  unloadIdle(maxIdleMs: number, now = Date.now()): Promise<number> {
    return this.unloadWhere((job) => now - job.lastUsedAt > maxIdleMs);
  }

  /** Checkpoints every training job and unloads every job (graceful stop). Returns how many checkpoints failed. */
  unloadAll(): Promise<number> {
    return this.unloadWhere(() => true);
  }

  private async unloadWhere(which: (job: TrainingJob) => boolean): Promise<number> {
    let failed = 0;
    for (const job of [...this.jobs.values()].filter(which)) {
      if (job.rec.state === 'training') {
        try {
          await job.checkpoint();
        } catch {
          failed++;
        }
      }
      await this.unload(job);
    }
    return failed;
  }

  private acquireHead(model: ModelSpec): OnnxHead {
    const key = headKeyOf(model);
    const entry = this.heads.get(key);
    if (entry) {
      entry.users++;
      return entry.head;
    }
    const stored = this.headStore.load(model);
    const head = new OnnxHead(stored.halves, stored.norm, model.normEpsilon);
    this.heads.set(key, { head, users: 1 });
    return head;
  }

  private releaseHead(key: string): void {
    const entry = this.heads.get(key);
    if (entry && --entry.users === 0) this.heads.delete(key);
  }

  /** Heads loaded now (one per model in use). */
  get loadedHeads(): number {
    return this.heads.size;
  }
}

function headKeyOf(model: ModelSpec): string {
  return `${model.fingerprint}.${model.headDigest}`;
}

function keyOf(rec: JobRecord): string {
  return `${rec.user}/${rec.id}`;
}
