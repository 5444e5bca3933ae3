import type { JobConfig, ModelSpec } from '../common/messages';
import { WireError } from '../common/WireError';
import type { SessionLimits } from './SessionLimits';
import { jobMemoryBytes } from './training/jobMemory';
import { jobShape, SideNetworkShape } from '../common/AdapterConfig';
import { headName, jobKey, JobRecord } from './storage/records';
import { LOCAL_LEASES } from './storage/LocalLeases';
import type { Heads, Jobs, Leases } from './storage/Store';
import type { Trainers } from './training/JobTrainer';
import { TrainingJob } from './TrainingJob';

/**
 * The jobs and model heads this server holds in memory. A job is loaded from
 * its last checkpoint the first time a session asks for it and unloaded when
 * it finishes, is cancelled or the server stops; a model's frozen head is
 * loaded once and shared by every loaded job of that model. Jobs train on
 * `trainers` (the server's pool of worker threads).
 */
export class JobRegistry {
  private readonly jobs = new Map<string, TrainingJob>();
  /** Jobs being built (from a checkpoint or fresh weights): counted like loaded ones once admitted. */
  private readonly loading = new Map<string, { rec: JobRecord; job: Promise<TrainingJob>; admitted: boolean }>();
  /** Per user, the end of the admissions queued (one user's admissions run one at a time, each counting every job admitted before it). */
  private readonly admissions = new Map<string, Promise<void>>();
  /** Heads loaded into the trainers, with the jobs using each (a head is loaded while `loaded` settles). */
  private readonly heads = new Map<string, { loaded: Promise<void>; users: number }>();

  constructor(
    private readonly trainers: Trainers,
    private readonly jobStore: Jobs,
    private readonly headStore: Heads,
    /** Called with the number of loaded jobs whenever it changes. */
    private readonly onLoadedJobsChanged: (count: number) => void = () => undefined,
    /** Which replica trains a job (the file store's: always this one). */
    private readonly leases: Leases = LOCAL_LEASES,
  ) {}

  /** Jobs loaded now. */
  get size(): number {
    return this.jobs.size;
  }

  /**
   * Refuses (LIMIT) a job `user` may not load now: past the jobs one user may
   * have loaded, or past the memory budget of one job or of one user (every
   * loaded job of that user counted, from its config: jobMemoryBytes).
   */
  private async admit(user: string, config: JobConfig, shape: SideNetworkShape, limits: SessionLimits, except?: string): Promise<void> {
    const mine = this.admittedRecords().filter((r) => r.user === user && jobKey(r) !== except);
    // Jobs of this user that other replicas train count too (PostgreSQL store).
    const elsewhere = await this.leases.heldElsewhere(user);
    if (mine.length + elsewhere >= limits.maxJobsPerUser) throw new WireError('LIMIT', `at most ${limits.maxJobsPerUser} jobs of one user are loaded at once; finish or cancel one`);
    const need = jobMemoryBytes(config, shape);
    const gib = (x: number): string => `${(x / 2 ** 30).toFixed(2)} GiB`;
    if (need > limits.maxJobMemoryBytes) throw new WireError('LIMIT', `this job needs about ${gib(need)} of server memory; the server allows ${gib(limits.maxJobMemoryBytes)} per job (a larger reduction, fewer tapped layers or shorter batches need less)`);
    const used = mine.reduce((sum, r) => sum + jobMemoryBytes(r.config, this.jobs.get(jobKey(r))?.shape ?? jobShape(r.config, r.model)), 0);
    if (used + need > limits.maxUserMemoryBytes) throw new WireError('LIMIT', `this user's loaded jobs hold about ${gib(used)}; with this one (${gib(need)}) they would pass the ${gib(limits.maxUserMemoryBytes)} allowed per user`);
  }

  /**
   * Runs `f` after the admissions of `user` queued before it have ended, so
   * that its admission counts every job they admitted (and creates in progress).
   */
  private admitting<T>(user: string, f: () => Promise<T>): Promise<T> {
    const run = (this.admissions.get(user) ?? Promise.resolve()).then(f);
    const end = run.then(() => undefined, () => undefined);
    this.admissions.set(user, end);
    void end.then(() => {
      if (this.admissions.get(user) === end) this.admissions.delete(user);
    });
    return run;
  }

  /**
   * The loaded job for a record: admitted first (LIMIT) when it is not in
   * memory, its lease taken (JOB_ELSEWHERE when another replica trains it),
   * then built from its last checkpoint.
   */
  async load(rec: JobRecord, limits: SessionLimits, shape: SideNetworkShape = jobShape(rec.config, rec.model)): Promise<TrainingJob> {
    const key = jobKey(rec);
    const job = this.jobs.get(key);
    if (job && !job.trainerLost) return job;
    // Its training worker stopped: dropped without a checkpoint (the stored one is its state) and opened again.
    if (job) await this.unload(job, new WireError('INTERNAL', 'the server\'s training worker stopped; resume the job to continue from its last stored checkpoint'));
    const pending = this.loading.get(key);
    if (pending) return pending.job;
    return this.track(rec, (entry) => this.admitting(rec.user, () => this.open(entry, limits, shape)));
  }

  /**
   * Creates a job of `user` and loads it: admitted (LIMIT), then `checkStorage`
   * (the user's disk quota), and only then its record written, with no other
   * admission of that user in between, so concurrent creates cannot all pass
   * and a refused create stores nothing. A job that then fails to load is removed.
   */
  async create(
    user: string, name: string, model: ModelSpec, config: JobConfig, shape: SideNetworkShape, limits: SessionLimits, checkStorage: () => Promise<void>,
  ): Promise<TrainingJob> {
    return this.admitting(user, async () => {
      await this.admit(user, config, shape, limits);
      await checkStorage();
      const rec = await this.jobStore.create(user, name, model, config);
      try {
        return await this.track(rec, (entry) => this.open(entry, limits, shape));
      } catch (err) {
        await this.jobStore.remove(rec).catch(() => undefined);
        throw err;
      }
    });
  }

  /** Counts the job of `rec` as loading while `opening` builds it, then as loaded. */
  private async track(rec: JobRecord, opening: (entry: { rec: JobRecord; admitted: boolean }) => Promise<TrainingJob>): Promise<TrainingJob> {
    const key = jobKey(rec);
    const entry: { rec: JobRecord; admitted: boolean; job: Promise<TrainingJob> } = { rec, admitted: false, job: Promise.resolve().then(() => opening(entry)) };
    this.loading.set(key, entry);
    try {
      const loaded = await entry.job;
      this.jobs.set(key, loaded);
      this.onLoadedJobsChanged(this.jobs.size);
      return loaded;
    } finally {
      this.loading.delete(key);
    }
  }

  private async open(entry: { rec: JobRecord; admitted: boolean }, limits: SessionLimits, shape: SideNetworkShape): Promise<TrainingJob> {
    const { rec } = entry;
    // The lease first: a job another replica trains is pointed there (and its lease is not counted against this user twice).
    await this.leases.acquire(rec);
    let head: string | undefined;
    try {
      await this.admit(rec.user, rec.config, shape, limits, jobKey(rec));
      entry.admitted = true;
      // The record as the lease's last owner left it (another replica may have trained it).
      const current = (await this.jobStore.get(rec.user, rec.id)) ?? rec;
      // A label-private job needs no head: the device computes the loss with its own.
      head = current.config.labelPrivate ? undefined : await this.acquireHead(current.model);
      return await TrainingJob.open(current, this.jobStore, this.trainers, shape, head);
    } catch (err) {
      if (head) this.releaseHead(head);
      await this.leases.release(rec);
      throw err;
    }
  }

  /**
   * Drops a job whose lease another replica took: nothing of it is written
   * (the new owner's state is the job's), and its devices are told where it went.
   */
  async forget(key: string): Promise<void> {
    const job = this.jobs.get(key);
    if (!job) return;
    this.jobs.delete(key);
    this.onLoadedJobsChanged(this.jobs.size);
    await job.dispose(new WireError('JOB_ELSEWHERE', 'another server replica took this job over; reconnect and resume it there'));
    if (!job.rec.config.labelPrivate) this.releaseHead(headName(job.rec.model));
  }

  /** The loaded job `id` of `user`, if it is in memory. */
  loaded(user: string, id: string): TrainingJob | undefined {
    return this.jobs.get(jobKey({ user, id }));
  }

  /** Whether the job of `rec` is in memory now. */
  isLoaded(rec: JobRecord): boolean {
    return this.jobs.has(jobKey(rec));
  }

  /** Jobs of `user` loaded now (training, or loaded to evaluate). */
  loadedJobsOf(user: string): number {
    return [...this.jobs.values()].filter((j) => j.rec.user === user).length;
  }

  /** The records of the jobs loaded, or being loaded once admitted (what admission counts). */
  private admittedRecords(): JobRecord[] {
    return [...[...this.jobs.values()].map((j) => j.rec), ...[...this.loading.values()].filter((l) => l.admitted).map((l) => l.rec)];
  }

  /** The records of the jobs loaded or being loaded. */
  private records(): JobRecord[] {
    return [...[...this.jobs.values()].map((j) => j.rec), ...[...this.loading.values()].map((l) => l.rec)];
  }

  /** Waits for the job's queued work, frees it, and releases its head (with a `reason`, work not yet started fails with it). */
  async unload(job: TrainingJob, reason?: WireError): Promise<void> {
    const key = jobKey(job.rec);
    if (this.jobs.get(key) !== job) return;
    this.jobs.delete(key);
    this.onLoadedJobsChanged(this.jobs.size);
    await job.dispose(reason);
    if (!job.rec.config.labelPrivate) this.releaseHead(headName(job.rec.model));
    await this.leases.release(job.rec);
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

  /** Loads the model's head into the trainers unless a loaded job uses it already; returns its key. */
  private async acquireHead(model: ModelSpec): Promise<string> {
    const key = headName(model);
    await this.headStore.touch(model);
    let entry = this.heads.get(key);
    if (!entry) {
      const loaded = this.headStore.load(model).then((stored) => this.trainers.loadHead(key, stored, model.normEpsilon));
      entry = { loaded, users: 0 };
      this.heads.set(key, entry);
      loaded.catch(() => {
        if (this.heads.get(key) === entry) this.heads.delete(key);
      });
    }
    entry.users++;
    try {
      await entry.loaded;
    } catch (err) {
      entry.users--;
      throw err;
    }
    return key;
  }

  private releaseHead(key: string): void {
    const entry = this.heads.get(key);
    if (entry && --entry.users === 0) {
      this.heads.delete(key);
      this.trainers.releaseHead(key);
    }
  }

  /** The file names of the heads loaded jobs use now (never expired). */
  headsInUse(): Set<string> {
    return new Set(this.records().filter((r) => !r.config.labelPrivate).map((r) => headName(r.model)));
  }

  /** Heads loaded now (one per model in use). */
  get loadedHeads(): number {
    return this.heads.size;
  }
}
