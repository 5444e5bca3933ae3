import { WebSocket } from 'ws';
import { backboneInitNames, jobShape, parameterNames, parameterSize, SideNetworkShape } from '../common/AdapterConfig';
import { decodeDeviceFrame, encodeFrame } from '../common/codec';
import { jobConfigProblem } from '../common/jobConfigProblem';
import { ADAPTER_CHUNK_BYTES, CloseCode, MAX_SEND_BUFFER_BYTES, PROTOCOL_VERSION } from '../common/limits';
import { Answer, DeviceMessage, JobConfig, ModelSpec, Reply, RequestType, ServerMessage } from '../common/messages';
import { WireError, WireErrorCode } from '../common/WireError';
import { HeadUpload } from './HeadUpload';
import { BatchSession, JobBatches } from './JobBatches';
import { SessionContext } from './SessionContext';
import { FINGERPRINT_PATTERN, headBytes, JobRecord, normValuesOf } from './storage/records';
import { wireErrorOf } from './wireErrorOf';
import { jobDiskBytes } from './training/jobMemory';
import { JobOwner, TrainingJob } from './TrainingJob';


/** Handles device message T: a request's handler returns its reply (sent with the request's id), a streamed message's handler nothing. */
/** Least time between two job/waiting notices of one job, milliseconds. */
const WAITING_NOTICE_MS = 1000;

type Handler<T extends DeviceMessage['type']> = (msg: DeviceMessage<T>, payload: Buffer) => Answer<T> | Promise<Answer<T>>;

/**
 * One device connection. Validates every frame, then dispatches by type.
 * Application errors are typed `error` messages; a protocol version mismatch
 * closes the socket after the error.
 */
export class DeviceSession implements BatchSession, JobOwner {
  private model: ModelSpec | undefined;
  /** The head being uploaded, once its storage check passed (chunks arriving meanwhile wait for it, in order). */
  private upload: Promise<HeadUpload> | undefined;
  private readonly batches = new JobBatches(this);
  private lastSeen = Date.now();
  /** When each job was last told it waits for its worker (job/waiting, at most once per WAITING_NOTICE_MS). */
  private readonly waitingNoticed = new Map<string, number>();
  private alive = true;
  private readonly handlers: { [T in DeviceMessage['type']]: Handler<T> };

  constructor(
    readonly ctx: SessionContext,
    private readonly ws: WebSocket,
    readonly user: string,
    /** When the user's token was issued (a revocation or re-issue closes the session). */
    readonly tokenSince = '',
  ) {
    this.handlers = {
      'session/hello': (m) => this.onHello(m),
      'head/begin': (m, p) => this.onHeadBegin(m, p),
      'head/chunk': (m, p) => this.onHeadChunk(m, p),
      'head/end': () => this.onHeadEnd(),
      'job/create': (m, p) => this.onJobCreate(m, p),
      'job/resume': (m) => this.onJobResume(m),
      'job/list': () => this.onJobList(),
      'batch/train': (m, p) => this.batches.onTrain(m, p),
      'batch/eval': (m, p) => this.batches.onEval(m, p),
      'batch/grad': (m, p) => this.batches.onGrad(m, p),
      'job/finish': (m) => this.onFinish(m),
      'job/cancel': (m) => this.onCancel(m),
      'adapter/get': (m) => this.onAdapterGet(m),
    };
    ws.on('message', (data, isBinary) => this.onMessage(data as Buffer, isBinary));
    ws.on('pong', () => (this.alive = true));
    ws.on('error', () => undefined); // 'close' follows; nothing to report
    ctx.log(`device connected (user ${user})`);
  }

  send(message: ServerMessage, payload?: Uint8Array): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    if (this.ws.bufferedAmount > (this.ctx.limits.maxSendBufferBytes ?? MAX_SEND_BUFFER_BYTES)) {
      this.ctx.log(`closing a session of user ${this.user}: it does not read its replies`);
      this.close(CloseCode.LIMIT, 'replies not read');
      return;
    }
    this.ws.send(encodeFrame(message, payload), { binary: true });
  }

  private sendError(code: WireErrorCode, message: string, fatal: boolean, jobId?: string, location?: string, requestId?: number): void {
    this.ctx.metrics.errors.inc({ code });
    this.send({ type: 'error', code, message, fatal, ...(jobId ? { jobId } : {}), ...(location ? { location } : {}), ...(requestId !== undefined ? { requestId } : {}) });
    if (fatal) this.close(code === 'VERSION_MISMATCH' ? CloseCode.VERSION_MISMATCH : CloseCode.BAD_FRAME, code);
  }

  /** A job this session trains waits for its training worker: the device is told (job/waiting), at most once per WAITING_NOTICE_MS. */
  jobWaiting(jobId: string, ahead: number): void {
    const now = Date.now();
    if (now - (this.waitingNoticed.get(jobId) ?? -Infinity) < WAITING_NOTICE_MS) return;
    this.waitingNoticed.set(jobId, now);
    this.send({ type: 'job/waiting', jobId, ahead });
  }

  close(code: number, reason: string): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(code, reason);
  }

  heartbeat(idleMs: number): void {
    if (!this.alive || Date.now() - this.lastSeen > idleMs) {
      this.ws.terminate();
      return;
    }
    this.alive = false;
    this.ws.ping();
  }

  closed(): void {
    this.ctx.log(`device disconnected (user ${this.user})`);
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    this.lastSeen = Date.now();
    this.ctx.metrics.bytesReceived.inc(data.length);
    if (!isBinary) return this.sendError('BAD_FRAME', 'text frames are not part of the protocol', false);
    let frame;
    try {
      frame = decodeDeviceFrame(data);
    } catch (err) {
      const e = err instanceof WireError ? err : new WireError('BAD_FRAME', 'undecodable frame');
      return this.sendError(e.code, e.message, e.code === 'VERSION_MISMATCH');
    }
    const { message, payload } = frame;
    if (!this.model && message.type !== 'session/hello') {
      return this.sendError('OUT_OF_ORDER', 'session/hello must come first', false);
    }
    const handler = this.handlers[message.type] as Handler<typeof message.type>;
    const jobId = 'jobId' in message ? message.jobId : undefined;
    const requestId = 'requestId' in message ? message.requestId : undefined;
    try {
      const r = handler(message as never, payload);
      if (r instanceof Promise) r.then((reply) => this.reply(reply, requestId), (err) => this.fail(err, jobId, requestId));
      else this.reply(r, requestId);
    } catch (err) {
      this.fail(err, jobId, requestId);
    }
  }

  /** Sends a request's reply with the request's id (a streamed message's handler returns nothing). */
  private reply(r: Reply<RequestType> | void, requestId: number | undefined): void {
    if (r) this.send({ ...r.message, ...(requestId !== undefined ? { requestId } : {}) }, r.payload);
  }

  fail(err: unknown, jobId?: string, requestId?: number): void {
    const wire = wireErrorOf(err);
    if (wire) return this.sendError(wire.code, wire.message, wire.fatal, jobId, wire.location, requestId);
    this.ctx.log(`internal error: ${err instanceof Error ? err.name : 'unknown'}`);
    this.sendError('INTERNAL', 'The server failed on this request; resume the job to continue from its last stored checkpoint.', false, jobId, undefined, requestId);
  }

  private async onHello(m: DeviceMessage<'session/hello'>): Promise<Reply<'session/hello'>> {
    if (m.protocol !== PROTOCOL_VERSION) throw new WireError('VERSION_MISMATCH', `protocol ${m.protocol} is not supported; this server speaks ${PROTOCOL_VERSION}`, true);
    if (this.model) throw new WireError('OUT_OF_ORDER', 'session/hello was already sent');
    const spec = m.model;
    if (!FINGERPRINT_PATTERN.test(spec.fingerprint) || !FINGERPRINT_PATTERN.test(spec.headDigest)) throw new WireError('BAD_FRAME', 'model.fingerprint and model.headDigest must be 64 hex digits');
    if (spec.layers < 1 || spec.hiddenSize < 1 || spec.vocabularySize < 1 || spec.hiddenSize > 65536 || spec.layers > 1024 || spec.normEpsilon <= 0 || (spec.softCap !== undefined && !(spec.softCap >= 0 && spec.softCap <= 1e4)) || (spec.normKind !== undefined && spec.normKind !== 'rms' && spec.normKind !== 'layer')) {
      throw new WireError('BAD_FRAME', 'model description out of range');
    }
    this.model = spec;
    const headCached = await this.ctx.heads.has(spec);
    return { message: { type: 'session/welcome', protocol: PROTOCOL_VERSION, server: 'mobillm-server', backend: this.ctx.backend, headCached, credits: this.ctx.limits.credits } };
  }

  private async onHeadBegin(m: DeviceMessage<'head/begin'>, payload: Buffer): Promise<void> {
    // Checked against the user's quota before the head's memory is taken.
    const begun = this.checkStorage(headBytes(m.rows, m.cols, normValuesOf(this.model!, m.cols)), 'this head').then(() => HeadUpload.begin(this.model!, m, payload));
    this.upload = begun;
    begun.catch(() => {
      if (this.upload === begun) this.upload = undefined;
    });
    await begun;
  }

  /**
   * LIMIT when `more` bytes would take this user past their storage quota: the
   * heads they uploaded, and their jobs, a training one counted at the most it
   * will take (jobDiskBytes) so that jobs cannot grow past the quota later.
   */
  private async checkStorage(more: number, what: string): Promise<void> {
    let jobs = 0;
    for (const r of await this.ctx.jobs.list(this.user)) {
      const now = await this.ctx.jobs.bytesOf(this.user, r.id);
      jobs += r.state === 'training' ? Math.max(now, jobDiskBytes(jobShape(r.config, r.model))) : now;
    }
    const used = jobs + (await this.ctx.heads.uploadedBytesOf(this.user));
    const quota = this.ctx.limits.maxUserStorageBytes;
    if (used + more > quota) {
      const mib = (x: number): string => `${(x / 2 ** 20).toFixed(0)} MiB`;
      throw new WireError('LIMIT', `${what} needs ${mib(more)} of the server's disk; this user stores ${mib(used)} of ${mib(quota)} allowed (delete finished jobs' data or ask the admin)`);
    }
  }

  private async onHeadChunk(m: DeviceMessage<'head/chunk'>, payload: Buffer): Promise<void> {
    const pending = this.upload;
    const up = await pending?.catch(() => undefined);
    if (!up || this.upload !== pending) throw new WireError('OUT_OF_ORDER', 'head/chunk before head/begin');
    try {
      up.chunk(m, payload);
    } catch (err) {
      this.upload = undefined;
      throw err;
    }
  }

  private async onHeadEnd(): Promise<Reply<'head/end'>> {
    const pending = this.upload;
    // Chunks sent before head/end wait on the same check and run first.
    const up = await pending?.catch(() => undefined);
    if (!up || this.upload !== pending) throw new WireError('OUT_OF_ORDER', 'head/end before head/begin');
    this.upload = undefined;
    up.verify();
    await this.ctx.heads.save(this.model!, up.rows, up.cols, up.norm, up.halves, this.user);
    this.ctx.log(`stored a model head (user ${this.user})`);
    return { message: { type: 'head/stored', fingerprint: this.model!.fingerprint } };
  }

  private checkConfig(c: JobConfig): void {
    const problem = jobConfigProblem(c, this.model!);
    if (problem) throw new WireError('BAD_FRAME', problem.message);
  }

  /**
   * A job/create payload: nothing, or the starting values, float32 LE in
   * order: of backboneInitNames (initFromBackbone), or of every parameter
   * (initFromAdapter: an update from the device's earlier adapter).
   */
  private startValuesOf(c: JobConfig, shape: SideNetworkShape, payload: Buffer): Map<string, Float32Array> | undefined {
    if (!c.initFromBackbone && !c.initFromAdapter) {
      if (payload.length > 0) throw new WireError('BAD_FRAME', 'job/create carries starting values only with initFromBackbone or initFromAdapter');
      return undefined;
    }
    const names = c.initFromAdapter ? parameterNames(shape) : backboneInitNames(shape);
    const sizes = names.map((n) => parameterSize(shape, n));
    if (payload.length !== 4 * sizes.reduce((a, b) => a + b, 0)) throw new WireError('BAD_FRAME', 'the starting values do not fit the side network');
    const all = new Float32Array(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.length));
    if (!all.every(Number.isFinite)) throw new WireError('BAD_FRAME', 'the starting values are not all finite');
    let at = 0;
    return new Map(names.map((n, i) => [n, all.subarray(at, (at += sizes[i]!))]));
  }

  private async onJobCreate(m: DeviceMessage<'job/create'>, payload: Buffer): Promise<Reply<'job/create'>> {
    const model = this.model!;
    if (!m.config.labelPrivate && !(await this.ctx.heads.has(model))) throw new WireError('HEAD_MISSING', 'upload the model head before creating a job');
    this.checkConfig(m.config);
    // The job's side network, computed once for every check below and for the job itself.
    const shape = jobShape(m.config, model);
    const start = this.startValuesOf(m.config, shape, payload);
    // Refused (LIMIT) before anything is stored or allocated: past the user's jobs, the memory budgets or the disk quota.
    const job = await this.ctx.registry.create(this.user, m.name, model, m.config, shape, this.ctx.limits, () => this.checkStorage(jobDiskBytes(shape), 'this job'));
    const rec = job.rec;
    job.owner = this;
    if (start) await job.startFrom(start);
    this.ctx.metrics.jobsCreated.inc();
    this.ctx.log(`job ${rec.id} created (user ${this.user}, ${m.config.totalSteps} steps)`);
    return { message: { type: 'job/ready', jobId: rec.id, nextIndex: job.nextIndex, step: job.step, state: rec.state } };
  }

  /**
   * The record of job `id` of this user and this session's model; NO_SUCH_JOB
   * for unknown or foreign ids. A loaded job's own record (no disk read per batch).
   */
  private async ownJob(id: string): Promise<JobRecord> {
    const rec = this.ctx.registry.loaded(this.user, id)?.rec ?? (await this.ctx.jobs.get(this.user, id));
    if (!rec) throw new WireError('NO_SUCH_JOB', 'no such job for this user');
    if (rec.model.fingerprint !== this.model!.fingerprint) throw new WireError('MODEL_MISMATCH', 'the job was created for a different model file');
    return rec;
  }

  /**
   * The job `id` of this user, loaded, that this session trains: a job that
   * is not training is never loaded for a training frame (JOB_STATE), and a
   * job another device session trains is refused with JOB_STATE (resuming it
   * here takes it over).
   */
  async trainingJob(id: string): Promise<TrainingJob> {
    return this.trainingJobOf(await this.ownJob(id));
  }

  private async trainingJobOf(rec: JobRecord): Promise<TrainingJob> {
    if (rec.state !== 'training') throw new WireError('JOB_STATE', `The job is ${rec.state}; resume it to train it again.`);
    const job = await this.ctx.registry.load(rec, this.ctx.limits);
    job.owner ??= this;
    if (job.owner !== this) throw new WireError('JOB_STATE', 'another device session is training this job; resume it from this device to take it over');
    return job;
  }

  /** The job `id` of this user, loaded for a held-out batch (admitted like any load); a job that is not training is loaded for that batch only. */
  async evalJob(id: string): Promise<{ job: TrainingJob; onlyForThis: boolean }> {
    const rec = await this.ownJob(id);
    if (rec.state === 'training') return { job: await this.trainingJobOf(rec), onlyForThis: false };
    const loaded = this.ctx.registry.isLoaded(rec);
    return { job: await this.ctx.registry.load(rec, this.ctx.limits), onlyForThis: !loaded };
  }

  private async onJobResume(m: DeviceMessage<'job/resume'>): Promise<Reply<'job/resume'>> {
    const rec = await this.ownJob(m.jobId);
    if (rec.state === 'finished') return { message: { type: 'job/ready', jobId: rec.id, nextIndex: rec.nextIndex, step: rec.step, state: rec.state } };
    const loaded = this.ctx.registry.loaded(this.user, m.jobId);
    // Back to the stored checkpoint: nothing after it is written, and the job opens again from it.
    if (m.fromCheckpoint && loaded) await this.ctx.registry.unload(loaded);
    const job = await this.ctx.registry.load(m.fromCheckpoint ? (await this.ctx.jobs.get(this.user, m.jobId)) ?? rec : rec, this.ctx.limits);
    await job.resume();
    job.owner = this;
    if (m.fromCheckpoint) this.ctx.log(`job ${m.jobId} opened again from its checkpoint at step ${job.step} (its device asked)`);
    return { message: { type: 'job/ready', jobId: rec.id, nextIndex: job.nextIndex, step: job.step, state: job.rec.state } };
  }

  private async onJobList(): Promise<Reply<'job/list'>> {
    const jobs = (await this.ctx.jobs.list(this.user)).map((r) => ({ id: r.id, name: r.name, state: r.state, step: r.step, totalSteps: r.config.totalSteps, fingerprint: r.model.fingerprint, createdAt: r.createdAt, updatedAt: r.updatedAt }));
    return { message: { type: 'job/list/result', jobs } };
  }

  private async onFinish(m: DeviceMessage<'job/finish'>): Promise<Reply<'job/finish'>> {
    const rec = await this.ownJob(m.jobId);
    if (rec.state === 'finished') return { message: { type: 'job/done', jobId: m.jobId, step: rec.step, state: 'finished' } };
    const job = await this.trainingJobOf(rec);
    await job.finish();
    this.ctx.log(`job ${m.jobId} finished at step ${job.step}`);
    const done: Reply<'job/finish'> = { message: { type: 'job/done', jobId: m.jobId, step: job.step, state: 'finished' } };
    await this.ctx.registry.unload(job);
    return done;
  }

  private async onCancel(m: DeviceMessage<'job/cancel'>): Promise<Reply<'job/cancel'>> {
    const rec = await this.ownJob(m.jobId);
    // Any device of the user may cancel; a job that is not training is not loaded for it.
    if (rec.state !== 'training') return { message: { type: 'job/done', jobId: m.jobId, step: rec.step, state: rec.state } };
    const job = await this.ctx.registry.load(rec, this.ctx.limits);
    await job.cancel();
    const done: Reply<'job/cancel'> = { message: { type: 'job/done', jobId: m.jobId, step: job.step, state: job.rec.state } };
    await this.ctx.registry.unload(job);
    return done;
  }

  private async onAdapterGet(m: DeviceMessage<'adapter/get'>): Promise<Reply<'adapter/get'>> {
    const rec = await this.ctx.jobs.get(this.user, m.jobId);
    if (!rec) throw new WireError('NO_SUCH_JOB', 'no such job for this user');
    const info = rec.state === 'finished' ? await this.ctx.jobs.adapterInfo(rec) : undefined;
    if (!info) throw new WireError('JOB_STATE', 'the job has no adapter yet; finish it first');
    const offset = m.offset ?? 0;
    if (offset > info.bytes) throw new WireError('BAD_FRAME', `offset past the adapter's ${info.bytes} bytes`);
    const part = await this.ctx.jobs.readAdapterPart(rec, offset, Math.min(this.ctx.limits.adapterChunkBytes ?? ADAPTER_CHUNK_BYTES, info.bytes - offset));
    return { message: { type: 'adapter/data', jobId: rec.id, bytes: info.bytes, sha256: info.sha256, offset }, payload: part };
  }

}
