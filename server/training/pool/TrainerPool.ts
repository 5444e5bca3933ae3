import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { yieldToEventLoop } from '../../../common/sliced';
import { WireError, WireErrorCode } from '../../../common/WireError';
import { ServerError, ServerErrorCode } from '../../ServerError';
import type { StoredHead } from '../../storage/records';
import type { EncodedBatch, JobTrainer, OpenedTrainer, OpenTrainer, Trainers, TrainOutcome } from '../JobTrainer';
import type { ExecutionDevice } from '../onnx/OnnxEngine';
import type { StepResult } from '../onnx/OnnxTrainer';
import type { TrainerCall, TrainerCalls, TrainerReply, TrainerRequest } from './trainerMessages';

/** Options of the pool of training workers. */
export interface TrainerPoolOptions {
  /** Worker threads, each training one step at a time. Default defaultTrainingWorkers(threads). */
  workers?: number;
  /** Execution provider of every worker's engine. Default 'cpu'. */
  device?: ExecutionDevice;
  /** Intra-op threads of each worker's engine. Default defaultTrainingThreads(). */
  threads?: number;
}

/** Intra-op threads per training worker by default: the machine's cores, at most 4 (a side-network step gains little beyond). */
export function defaultTrainingThreads(cores = os.availableParallelism()): number {
  return Math.max(1, Math.min(4, cores));
}

/** Training workers by default: as many as the cores hold at `threads` each (at least one). */
export function defaultTrainingWorkers(threads: number, cores = os.availableParallelism()): number {
  return Math.max(1, Math.floor(cores / threads));
}

/** Bytes copied into a head's shared memory between two turns of the event loop. */
const HEAD_COPY_SLICE_BYTES = 8 << 20;

interface Task {
  job: string;
  request: Omit<TrainerRequest, 'id'>;
  transfer: ArrayBuffer[];
  resolve: (result: unknown) => void;
  reject: (err: unknown) => void;
}

/**
 * One worker thread and what waits for it. Its tasks are queued per user
 * and taken round-robin across users (each user's in arrival order, so a
 * job's operations never reorder); one task runs at a time.
 */
class Slot {
  worker!: Worker;
  started!: Promise<void>;
  running: { id: number; task: Task } | undefined;
  readonly queues = new Map<string, Task[]>();
  /** Users in turn order; `turn` is the next to serve. */
  private users: string[] = [];
  private turn = 0;
  /** Jobs on this worker, by key, with their user. */
  readonly jobs = new Map<string, string>();
  /** Heads this worker holds, with the jobs using each. */
  readonly heads = new Map<string, number>();
  /** Trainers of this worker's jobs (told when the worker is lost). */
  readonly trainers = new Set<PooledTrainer>();

  constructor(readonly index: number) {}

  enqueue(user: string, task: Task): void {
    let q = this.queues.get(user);
    if (!q) {
      q = [];
      this.queues.set(user, q);
      this.users.push(user);
    }
    q.push(task);
  }

  /** Tasks waiting, of jobs other than `job`. */
  waitingBefore(job: string): number {
    let n = this.running && this.running.task.job !== job ? 1 : 0;
    for (const q of this.queues.values()) for (const t of q) if (t.job !== job) n++;
    return n;
  }

  /** The next task, round-robin across users with work. */
  next(): Task | undefined {
    for (let k = 0; k < this.users.length; k++) {
      const i = (this.turn + k) % this.users.length;
      const user = this.users[i]!;
      const q = this.queues.get(user)!;
      if (q.length === 0) continue;
      const task = q.shift()!;
      if (q.length === 0) {
        this.queues.delete(user);
        this.users.splice(i, 1);
        this.turn = this.users.length === 0 ? 0 : i % this.users.length;
      } else {
        this.turn = (i + 1) % this.users.length;
      }
      return task;
    }
    return undefined;
  }

  get pending(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }
}

/** The main thread's handle on a job trained in a worker: the JobTrainer interface over messages. */
class PooledTrainer implements JobTrainer {
  step: number;
  /** The worker stopped (crashed or the pool was closed): every call fails; the job is reloaded from its checkpoint. */
  lost = false;
  /** Told how many operations of other jobs are ahead when one of this job's waits for its worker. */
  onWaiting: ((ahead: number) => void) | undefined;

  constructor(
    private readonly pool: TrainerPool,
    readonly slot: Slot,
    readonly job: string,
    readonly user: string,
    readonly headKey: string | undefined,
    step: number,
  ) {
    this.step = step;
  }

  private call<C extends TrainerCall>(call: C, params: Omit<TrainerCalls[C]['params'], 'job'>, transfer: ArrayBuffer[] = []): Promise<TrainerCalls[C]['result']> {
    if (this.lost) return Promise.reject(lostError());
    return this.pool.submit(this.slot, this.user, this.job, call, { ...params, job: this.job } as TrainerCalls[C]['params'], transfer, this.onWaiting);
  }

  /** A batch whose payload has a buffer of its own (moved to the worker; the socket's buffer stays here). */
  private static owned(batch: EncodedBatch): { batch: EncodedBatch; transfer: ArrayBuffer[] } {
    const payload = new Uint8Array(batch.payload);
    return { batch: { ...batch, payload }, transfer: [payload.buffer] };
  }

  private stepped<T extends StepResult | TrainOutcome>(r: T): T {
    if (typeof r === 'object') this.step = r.step;
    return r;
  }

  async train(batch: EncodedBatch): Promise<TrainOutcome> {
    const own = PooledTrainer.owned(batch);
    return this.stepped(await this.call('job/train', { batch: own.batch }, own.transfer));
  }

  evaluate(batch: EncodedBatch): Promise<{ lossSum: number; tokens: number }> {
    const own = PooledTrainer.owned(batch);
    return this.call('job/evaluate', { batch: own.batch }, own.transfer);
  }

  sideOutput(batch: EncodedBatch, keepFor?: number): Promise<Uint8Array | 'nonFinite'> {
    const own = PooledTrainer.owned(batch);
    return this.call('job/sideOutput', { batch: own.batch, ...(keepFor !== undefined ? { keepFor } : {}) }, own.transfer);
  }

  async upstreamStep(index: number, dy: Uint8Array, lossSum: number, tokens: number): Promise<StepResult> {
    const own = new Uint8Array(dy);
    return this.stepped(await this.call('job/upstreamStep', { index, dy: own, lossSum, tokens }, [own.buffer]));
  }

  forgetPending(): Promise<void> {
    return this.call('job/forgetPending', {});
  }

  setStartValues(values: Map<string, Float32Array>): Promise<void> {
    return this.call('job/setStartValues', { values });
  }

  encode(kind: 'checkpoint' | 'adapter', meta: Record<string, unknown>): Promise<Uint8Array | 'nonFinite'> {
    return this.call('job/encode', { kind, meta });
  }

  async dispose(): Promise<void> {
    if (this.lost) return;
    await this.call('job/close', {}).catch(() => undefined);
    this.pool.closed(this);
  }
}

function lostError(): WireError {
  return new WireError('INTERNAL', 'the server\'s training worker stopped; resume the job to continue from its last stored checkpoint');
}

/** A worker's error as the main thread raises it: a wire or server error as it was thrown there (their messages hold no data), anything else INTERNAL. */
function errorFromWorker(e: Extract<TrainerReply, { ok: false }>['error']): Error {
  if (e.wire) return new WireError(e.wire.code as WireErrorCode, e.wire.message);
  if (e.server) return new ServerError(e.server.code as ServerErrorCode, e.server.message);
  return new WireError('INTERNAL', 'The server failed on this request; resume the job to continue from its last stored checkpoint.');
}

/**
 * The server's trainers in a pool of worker threads, so that the main thread
 * only holds sockets, sign-ins, storage, leases and scheduling. A job trains
 * on one worker (its weights and Adam state live there), chosen at open as
 * the one with the fewest jobs; a worker serves its jobs' operations one at a
 * time, round-robin across users. A model's head is read once into shared
 * memory and copied by each worker that trains a job of that model.
 */
export class TrainerPool implements Trainers {
  readonly device: ExecutionDevice;
  readonly threads: number;
  private readonly slots: Slot[];
  private nextId = 1;
  private readonly waiting = new Map<number, Task>();
  private readonly shared = new Map<string, { halves: SharedArrayBuffer; norm: Float32Array; cols: number; eps: number }>();
  private closedPool = false;
  name = '';
  /** Called when a worker stops unexpectedly (the pool starts a new one in its place). */
  onWorkerLost: ((index: number) => void) | undefined;

  private constructor(options: TrainerPoolOptions) {
    this.device = options.device ?? 'cpu';
    this.threads = options.threads ?? defaultTrainingThreads();
    const n = options.workers ?? defaultTrainingWorkers(this.threads);
    if (!Number.isInteger(n) || n < 1 || n > 256) throw new ServerError('BAD_CONFIG', 'training workers must be a whole number from 1 to 256.');
    this.slots = Array.from({ length: n }, (_, i) => new Slot(i));
  }

  get workers(): number {
    return this.slots.length;
  }

  /** Starts every worker and its engine (NO_BACKEND when the provider cannot run). */
  static async create(options: TrainerPoolOptions = {}): Promise<TrainerPool> {
    const pool = new TrainerPool(options);
    try {
      await Promise.all(pool.slots.map((s) => pool.spawn(s)));
    } catch (err) {
      await pool.dispose();
      throw err;
    }
    return pool;
  }

  private spawn(slot: Slot): Promise<void> {
    const worker = new Worker(path.join(__dirname, 'trainerWorker.js'));
    slot.worker = worker;
    worker.on('message', (reply: TrainerReply) => this.onReply(slot, reply));
    worker.on('error', () => this.lose(slot, worker));
    worker.on('exit', () => this.lose(slot, worker));
    slot.started = this.post<'engine/start'>(slot, '', 'engine/start', { device: this.device, threads: this.threads }, []).then((r) => {
      this.name = r.name;
    });
    return slot.started;
  }

  /** A worker that stopped: its waiting work fails, its jobs are lost (reloaded from their checkpoints), and a new worker takes its place. */
  private lose(slot: Slot, worker: Worker): void {
    if (slot.worker !== worker) return;
    const err = lostError();
    const running = slot.running;
    slot.running = undefined;
    if (running) {
      this.waiting.delete(running.id);
      running.task.reject(err);
    }
    for (const q of slot.queues.values()) for (const t of q) t.reject(err);
    slot.queues.clear();
    for (const t of slot.trainers) t.lost = true;
    slot.trainers.clear();
    slot.jobs.clear();
    slot.heads.clear();
    if (this.closedPool) return;
    this.onWorkerLost?.(slot.index);
    void this.spawn(slot).catch(() => undefined);
  }

  /** Sends one task to `slot` now or queues it under `user`; resolves with its result. */
  submit<C extends TrainerCall>(slot: Slot, user: string, job: string, call: C, params: TrainerCalls[C]['params'], transfer: ArrayBuffer[], onWaiting?: (ahead: number) => void): Promise<TrainerCalls[C]['result']> {
    return new Promise((resolve, reject) => {
      const task: Task = { job, request: { call, params }, transfer, resolve: resolve as (r: unknown) => void, reject };
      if (!slot.running && slot.pending === 0) return this.start(slot, task);
      slot.enqueue(user, task);
      const ahead = slot.waitingBefore(job);
      if (ahead > 0) onWaiting?.(ahead);
    });
  }

  private post<C extends TrainerCall>(slot: Slot, job: string, call: C, params: TrainerCalls[C]['params'], transfer: ArrayBuffer[]): Promise<TrainerCalls[C]['result']> {
    return new Promise((resolve, reject) => this.start(slot, { job, request: { call, params }, transfer, resolve: resolve as (r: unknown) => void, reject }));
  }

  private start(slot: Slot, task: Task): void {
    const id = this.nextId++;
    slot.running = { id, task };
    this.waiting.set(id, task);
    slot.worker.postMessage({ id, ...task.request } satisfies TrainerRequest, task.transfer);
  }

  private onReply(slot: Slot, reply: TrainerReply): void {
    const task = this.waiting.get(reply.id);
    if (!task) return;
    this.waiting.delete(reply.id);
    if (slot.running?.id === reply.id) slot.running = undefined;
    if (reply.ok) task.resolve(reply.result);
    else task.reject(errorFromWorker(reply.error));
    const next = slot.running ? undefined : slot.next();
    if (next) this.start(slot, next);
  }

  /** Copies a model's head into shared memory once (in slices: the event loop runs between them); workers take it when a job of that model opens on them. */
  async loadHead(key: string, head: StoredHead, eps: number): Promise<void> {
    if (this.shared.has(key)) return;
    const halves = new SharedArrayBuffer(head.halves.byteLength);
    const to = new Uint8Array(halves);
    const from = new Uint8Array(head.halves.buffer, head.halves.byteOffset, head.halves.byteLength);
    for (let at = 0; at < from.length; at += HEAD_COPY_SLICE_BYTES) {
      to.set(from.subarray(at, Math.min(from.length, at + HEAD_COPY_SLICE_BYTES)), at);
      if (at + HEAD_COPY_SLICE_BYTES < from.length) await yieldToEventLoop();
    }
    this.shared.set(key, { halves, norm: Float32Array.from(head.norm), cols: head.cols, eps });
  }

  releaseHead(key: string): void {
    this.shared.delete(key);
  }

  /** The slot with the fewest jobs (the first of those). */
  private leastBusy(): Slot {
    return this.slots.reduce((best, s) => (s.jobs.size < best.jobs.size ? s : best), this.slots[0]!);
  }

  async open(request: OpenTrainer): Promise<OpenedTrainer> {
    if (this.closedPool) throw lostError();
    const slot = this.leastBusy();
    await slot.started;
    const { job, user, headKey } = request;
    slot.jobs.set(job, user);
    try {
      if (headKey !== undefined && !slot.heads.has(headKey)) {
        const head = this.shared.get(headKey);
        if (!head) throw new RangeError('the job\'s model head is not loaded');
        await this.submit(slot, user, job, 'head/load', { key: headKey, halves: head.halves, norm: head.norm, cols: head.cols, eps: head.eps }, []);
        slot.heads.set(headKey, 0);
      }
      if (headKey !== undefined) slot.heads.set(headKey, slot.heads.get(headKey)! + 1);
      const checkpoints = request.checkpoints.map((c) => new Uint8Array(c));
      const r = await this.submit(slot, user, job, 'job/open', { job, spec: request.spec, ...(headKey !== undefined ? { headKey } : {}), checkpoints }, checkpoints.map((c) => c.buffer as ArrayBuffer));
      if (r.unreadable) {
        this.forget(slot, job, headKey);
        return { unreadable: true };
      }
      const trainer = new PooledTrainer(this, slot, job, user, headKey, r.step);
      slot.trainers.add(trainer);
      return { trainer, ...(r.from ? { from: r.from } : {}) };
    } catch (err) {
      this.forget(slot, job, headKey);
      throw err;
    }
  }

  /** A trainer closed: its job leaves the worker, and the worker lets a head go that no job of it uses. */
  closed(trainer: PooledTrainer): void {
    trainer.slot.trainers.delete(trainer);
    this.forget(trainer.slot, trainer.job, trainer.headKey);
  }

  private forget(slot: Slot, job: string, headKey: string | undefined): void {
    slot.jobs.delete(job);
    if (headKey === undefined || !slot.heads.has(headKey)) return;
    const users = slot.heads.get(headKey)! - 1;
    if (users > 0) return void slot.heads.set(headKey, users);
    slot.heads.delete(headKey);
    void this.submit(slot, '', '', 'head/release', { key: headKey }, []).catch(() => undefined);
  }

  /** Jobs per worker now (for /healthz and the load benchmark). */
  jobsPerWorker(): number[] {
    return this.slots.map((s) => s.jobs.size);
  }

  async dispose(): Promise<void> {
    this.closedPool = true;
    await Promise.all(this.slots.map((s) => s.worker?.terminate().catch(() => undefined)));
  }
}
