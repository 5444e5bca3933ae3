import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Bits, isBits } from '../../common/ActivationQuantizer';
import { encodeBatchPayload } from '../../common/batchPayload';
import { encodeHalf } from '../../common/float16';
import { HEAD_CHUNK_BYTES } from '../../common/limits';
import { JobConfig, ModelSpec, ServerMessage } from '../../common/messages';
import { writeFileAtomic } from '../../common/atomicWrite';
import { AdapterStore } from './AdapterStore';
import { Backbone } from './Backbone';
import { batchesPerEpoch, buildDataset, Dataset, splitInputsTargets, trainBatchSequences } from './dataset';
import type { EmbeddedServer } from './EmbeddedServer';
import { MobiError } from './MobiError';
import { modelFingerprint } from './modelFingerprint';
import { ScanOptions, ScanReport, scanWorkspace } from './scanWorkspace';
import { ServerConnection } from './ServerConnection';

export type JobPhase = 'scanning' | 'connecting' | 'uploading-head' | 'evaluating' | 'training' | 'downloading' | 'done' | 'failed' | 'cancelled';

/** Options of a fine-tuning job. Every field has a default a newcomer can keep. */
export interface FineTuneOptions {
  /** Folder of source code to learn from. */
  workspace: string;
  /** GGUF path or hf: URI of the backbone. */
  model: string;
  /** Team server; undefined starts an embedded server in this process on 127.0.0.1. */
  server?: { url: string; token: string };
  /** Optimizer steps; default: `epochs` passes over the training sequences. */
  steps?: number;
  /** Passes over the training data when `steps` is not given. Default 1. */
  epochs?: number;
  /** Tokens predicted per sequence. Default 128. */
  seqLen?: number;
  /** Sequences per batch (one optimizer step). Default 4. */
  batchSize?: number;
  /** Activation width on the wire. Default 8. */
  bits?: Bits;
  /** Side width r = d / reduction. Default 8. */
  reduction?: number;
  /** Leave the first k layers untapped (less exposure of early activations). Default 0. */
  skipLayers?: number;
  /** Peak learning rate. Default 2e-3. */
  learningRate?: number;
  /** Seed of the split, shuffles and initial weights. Default 1. */
  seed?: number;
  /** Server checkpoint interval in steps. Default 25. */
  checkpointEvery?: number;
  /** Held-out file fraction. Default 0.1. */
  heldOutFraction?: number;
  /** Cap on held-out sequences. Default 32. */
  maxHeldOutSequences?: number;
  /** Workspace scan filters and limits. */
  scan?: ScanOptions;
  /** Device store (adapters, job records, embedded server data). Default ~/.mobillm. */
  storeDir?: string;
  /** CPU threads for the backbone. Default cores - 1. */
  threads?: number;
  /** Give up reconnecting after this long. Default 120 s. */
  reconnectTimeoutMs?: number;
  /** Continue this job (its record is in the store). */
  resumeJobId?: string;
  /** Called with the scan report before any work; return false to stop. */
  confirm?: (report: ScanReport) => Promise<boolean> | boolean;
  onProgress?: (p: JobProgress) => void;
  /** Sees every frame this device sends, byte for byte (auditing what crosses the wire). */
  onFrameSent?: (frame: Uint8Array) => void;
  /** Writes one line per event (numbers only, never source text). */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface JobProgress {
  phase: JobPhase;
  jobId?: string;
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
}

export interface FineTuneResult {
  jobId: string;
  steps: number;
  trainTokens: number;
  heldOutLossBefore: number;
  heldOutLossAfter: number;
  adapter: string;
  model: string;
  bytesSent: number;
  seconds: number;
  /** Acknowledgements received per batch index (resent batches count again). */
  acks: Map<number, number>;
  timings: { deviceForwardSeconds: number; quantizeSeconds: number; sendSeconds: number; serverSeconds: number; wallSeconds: number; trainWallSeconds: number };
  bytesPerToken: number;
  config: JobConfig;
  scan: ScanReport;
}

/** Device-side record of a job, so it can be resumed by a later process. */
interface JobRecordFile {
  jobId: string;
  serverUrl?: string;
  workspace: string;
  fingerprint: string;
  heldOutLossBefore?: number;
}

const CONNECTION_ERRORS = new Set(['CONNECTION_LOST', 'SERVER_UNREACHABLE']);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

export function defaultStoreDir(): string {
  return process.env.MOBILLM_HOME ?? path.join(os.homedir(), '.mobillm');
}

/**
 * One fine-tuning job, device side: scan, tokenize, run the frozen backbone
 * with capture, stream quantized activations under the server's credits
 * (device forward of batch k+1 overlaps the server's step on batch k),
 * evaluate before and after, download and verify the adapter. Reconnects
 * with backoff and resumes from the server's checkpoint after a drop.
 */
export class FineTuneJob {
  phase: JobPhase = 'scanning';
  private readonly o: Required<Omit<FineTuneOptions, 'server' | 'steps' | 'resumeJobId' | 'confirm' | 'onProgress' | 'onFrameSent' | 'log' | 'signal' | 'threads'>> & FineTuneOptions;
  private backbone: Backbone | undefined;
  private embedded: EmbeddedServer | undefined;
  private data!: Dataset;
  private fingerprint = '';
  private modelPath = '';
  private config!: JobConfig;
  private jobId: string | undefined;
  private before: number | undefined;
  private after: number | undefined;
  private adapterPath: string | undefined;
  private finished = false;
  private readonly acks = new Map<number, number>();
  private readonly t = { deviceForwardSeconds: 0, quantizeSeconds: 0, sendSeconds: 0, serverSeconds: 0, wallSeconds: 0, trainWallSeconds: 0 };
  private bytesSentBefore = 0;
  private conn: ServerConnection | undefined;
  private readonly progress: JobProgress = { phase: 'scanning', step: 0, totalSteps: 0, sequencesDone: 0, tokensDone: 0, deviceTokensPerSecond: 0, bytesSent: 0, deviceRssBytes: 0, lossHistory: [] };
  private trainStartedAt = 0;
  /** When the current loss of connection began (reconnection gives up after reconnectTimeoutMs). */
  private outageStartedAt: number | undefined;
  private stepsAtSessionStart = 0;

  constructor(options: FineTuneOptions) {
    this.o = {
      epochs: 1, seqLen: 128, batchSize: 4, bits: 8, reduction: 8, skipLayers: 0, learningRate: 2e-3, seed: 1, checkpointEvery: 25,
      heldOutFraction: 0.1, maxHeldOutSequences: 32, scan: {}, storeDir: defaultStoreDir(), reconnectTimeoutMs: 120_000,
      ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as FineTuneOptions),
    };
    if (!isBits(this.o.bits)) throw new MobiError('BAD_ARGUMENT', 'bits must be 4, 8 or 16.');
  }

  private log(line: string): void {
    this.o.log?.(line);
  }

  private setPhase(phase: JobPhase): void {
    this.phase = phase;
    this.log(`phase ${phase}`);
    this.emit();
  }

  private emit(): void {
    const p = this.progress;
    p.phase = this.phase;
    p.jobId = this.jobId;
    p.bytesSent = this.bytesSentBefore + (this.conn?.bytesSent ?? 0);
    p.deviceRssBytes = process.memoryUsage().rss;
    p.heldOutLossBefore = this.before;
    p.heldOutLossAfter = this.after;
    p.deviceTokensPerSecond = this.t.deviceForwardSeconds > 0 ? p.tokensDone / this.t.deviceForwardSeconds : 0;
    const done = p.step - this.stepsAtSessionStart;
    if (this.phase === 'training' && done > 0) {
      p.etaSeconds = ((Date.now() - this.trainStartedAt) / 1000 / done) * (p.totalSteps - p.step);
    }
    this.o.onProgress?.({ ...p, lossHistory: p.lossHistory });
  }

  private checkCancelled(): void {
    if (this.o.signal?.aborted) throw new MobiError('CANCELLED', 'Fine-tuning was cancelled.');
  }

  private get recordFile(): string {
    return path.join(this.o.storeDir, 'jobs', `${this.jobId}.json`);
  }

  private saveRecord(): void {
    if (!this.jobId) return;
    const rec: JobRecordFile = { jobId: this.jobId, serverUrl: this.o.server?.url, workspace: path.resolve(this.o.workspace), fingerprint: this.fingerprint, heldOutLossBefore: this.before };
    writeFileAtomic(this.recordFile, `${JSON.stringify(rec, null, 2)}\n`);
  }

  async run(): Promise<FineTuneResult> {
    const started = Date.now();
    try {
      const scan = await this.prepare();
      await this.withReconnect(() => this.session());
      this.t.wallSeconds = (Date.now() - started) / 1000;
      this.setPhase('done');
      return {
        jobId: this.jobId!,
        steps: this.progress.step,
        trainTokens: this.progress.tokensDone,
        heldOutLossBefore: this.before!,
        heldOutLossAfter: this.after!,
        adapter: this.adapterPath!,
        model: this.modelPath,
        bytesSent: this.progress.bytesSent,
        seconds: this.t.wallSeconds,
        acks: this.acks,
        timings: this.t,
        bytesPerToken: this.progress.tokensDone > 0 ? this.progress.bytesSent / this.progress.tokensDone : 0,
        config: this.config,
        scan,
      };
    } catch (err) {
      const e = err instanceof MobiError ? err : new MobiError('IO_ERROR', err instanceof Error ? err.message : String(err), { cause: err });
      if (e.code === 'CANCELLED') {
        await this.cancelOnServer();
        this.setPhase('cancelled');
      } else {
        this.setPhase('failed');
      }
      throw e;
    } finally {
      this.conn?.close();
      this.backbone?.dispose();
      await this.embedded?.stop();
    }
  }

  /** Scan, confirm, load the backbone, tokenize. */
  private async prepare(): Promise<ScanReport> {
    this.setPhase('scanning');
    const scan = scanWorkspace(this.o.workspace, this.o.scan);
    this.log(`scan: ${scan.files.length} files, ${scan.includedBytes} bytes included`);
    if (scan.files.length === 0) {
      throw new MobiError('EMPTY_WORKSPACE', `No usable source files in ${this.o.workspace} (binary, ignored, secret, too large or empty files are skipped).`);
    }
    if (this.o.confirm && !(await this.o.confirm(scan))) throw new MobiError('CANCELLED', 'Fine-tuning was cancelled before it started.');
    this.checkCancelled();
    const seqLen = this.o.seqLen;
    this.backbone = await Backbone.open(this.o.model, { contextSize: seqLen * this.o.batchSize, maxSequences: this.o.batchSize, threads: this.o.threads });
    this.modelPath = this.backbone.info.path;
    this.fingerprint = await modelFingerprint(this.modelPath);
    this.data = buildDataset(scan.files, (text) => this.backbone!.tokenize(text), {
      seqLen, seed: this.o.seed, heldOutFraction: this.o.heldOutFraction, maxHeldOutSequences: this.o.maxHeldOutSequences,
    });
    const L = this.backbone.info.layers;
    if (this.o.skipLayers < 0 || this.o.skipLayers >= L) throw new MobiError('BAD_ARGUMENT', `skipLayers must be between 0 and ${L - 1}.`);
    const totalSteps = this.o.steps ?? this.o.epochs * batchesPerEpoch(this.data, this.o.batchSize);
    if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new MobiError('BAD_ARGUMENT', 'The number of steps must be a positive integer.');
    this.config = {
      tappedLayers: Array.from({ length: L - this.o.skipLayers }, (_, i) => i + this.o.skipLayers),
      reduction: this.o.reduction, bits: this.o.bits, seqLen, batchSize: this.o.batchSize, totalSteps,
      learningRate: this.o.learningRate, warmupSteps: Math.max(1, Math.min(20, Math.floor(totalSteps / 10))), seed: this.o.seed,
      checkpointEvery: this.o.checkpointEvery,
    };
    this.progress.totalSteps = totalSteps;
    if (this.o.resumeJobId) {
      let rec: JobRecordFile;
      try {
        rec = JSON.parse(fs.readFileSync(path.join(this.o.storeDir, 'jobs', `${this.o.resumeJobId}.json`), 'utf8')) as JobRecordFile;
      } catch (err) {
        throw new MobiError('NO_SUCH_JOB', `No record of job ${this.o.resumeJobId} on this device.`, { cause: err });
      }
      if (rec.fingerprint !== this.fingerprint) throw new MobiError('MODEL_MISMATCH', 'The job was started with a different model file; select that model to resume it.');
      this.jobId = rec.jobId;
      this.before = rec.heldOutLossBefore;
    }
    this.log(`data: ${this.data.train.length} train / ${this.data.heldOut.length} held-out sequences, ${totalSteps} steps`);
    return scan;
  }

  private async withReconnect(body: () => Promise<void>): Promise<void> {
    let delay = 250;
    for (;;) {
      try {
        await body();
        return;
      } catch (err) {
        if (!(err instanceof MobiError) || !CONNECTION_ERRORS.has(err.code) || this.o.signal?.aborted) throw err;
        if (!this.jobId && err.code === 'SERVER_UNREACHABLE') throw err; // never connected: the URL or server is wrong
        this.outageStartedAt ??= Date.now();
        if (Date.now() - this.outageStartedAt > this.o.reconnectTimeoutMs) {
          throw new MobiError('CONNECTION_LOST', `Lost the server and could not reconnect for ${Math.round(this.o.reconnectTimeoutMs / 1000)} s. The job keeps its last checkpoint; resume it later.`, { cause: err });
        }
        this.log(`connection lost (${err.code}); reconnecting in ${delay} ms`);
        this.setPhase('connecting');
        await sleep(delay, this.o.signal);
        this.checkCancelled();
        delay = Math.min(5000, delay * 2);
        if (this.conn) {
          this.bytesSentBefore += this.conn.bytesSent;
          this.conn = undefined;
        }
      }
    }
  }

  private async connect(): Promise<ServerConnection> {
    this.setPhase('connecting');
    let url: string;
    let token: string;
    if (this.o.server) {
      ({ url, token } = this.o.server);
    } else {
      // Loaded only when needed: a device talking to a team server never loads TensorFlow.js.
      const { startEmbeddedServer } = await import('./EmbeddedServer.js');
      this.embedded ??= await startEmbeddedServer(this.o.storeDir, this.o.log);
      ({ url, token } = this.embedded);
    }
    const info = this.backbone!.info;
    const spec: ModelSpec = { fingerprint: this.fingerprint, architecture: info.architecture, layers: info.layers, hiddenSize: info.hiddenSize, vocabularySize: info.vocabularySize, normEpsilon: info.normEpsilon };
    const conn = await ServerConnection.open(url, token, spec, { onFrameSent: this.o.onFrameSent });
    this.conn = conn;
    this.outageStartedAt = undefined;
    this.log(`connected (server backend ${conn.welcome.backend}, credits ${conn.welcome.credits})`);
    return conn;
  }

  /** One connected session: everything from hello to the stored adapter, resuming where the job stands. */
  private async session(): Promise<void> {
    const conn = await this.connect();
    if (!conn.welcome.headCached) await this.uploadHead(conn);
    let ready: ServerMessage<'job/ready'>;
    if (this.jobId) {
      ready = (await conn.request({ type: 'job/resume', jobId: this.jobId }, 'job/ready', (m) => m.jobId === this.jobId)).message;
    } else {
      ready = (await conn.request({ type: 'job/create', name: path.basename(path.resolve(this.o.workspace)), config: this.config }, 'job/ready')).message;
      this.jobId = ready.jobId;
      this.saveRecord();
    }
    this.progress.step = ready.step;
    if (ready.state !== 'finished') {
      if (this.before === undefined) {
        this.before = await this.evaluate(conn, 'before');
        this.saveRecord();
      }
      await this.train(conn, ready.nextIndex);
      if (this.after === undefined) this.after = await this.evaluate(conn, 'after');
      await conn.request({ type: 'job/finish', jobId: this.jobId }, 'job/done', (m) => m.jobId === this.jobId);
    } else if (this.after === undefined) {
      throw new MobiError('SERVER_ERROR', 'The job finished on the server before its held-out evaluation; start a new job.');
    }
    this.finished = true;
    await this.download(conn);
  }

  private async uploadHead(conn: ServerConnection): Promise<void> {
    this.setPhase('uploading-head');
    const bb = this.backbone!;
    const d = bb.info.hiddenSize;
    const rows = bb.info.vocabularySize;
    const norm = await bb.readTensor('output_norm.weight');
    conn.send({ type: 'head/begin', rows, cols: d }, new Uint8Array(norm.data.buffer, norm.data.byteOffset, norm.data.byteLength));
    const perChunk = Math.max(1, Math.floor(HEAD_CHUNK_BYTES / (2 * d)));
    for (let start = 0; start < rows; start += perChunk) {
      this.checkCancelled();
      const count = Math.min(perChunk, rows - start);
      const t = await bb.readTensor(bb.info.headTensor, start, count);
      conn.send({ type: 'head/chunk', rowStart: start, rowCount: count }, new Uint8Array(encodeHalf(t.data).buffer));
    }
    await conn.request({ type: 'head/end' }, 'head/stored');
    this.log('model head uploaded');
  }

  /** Runs the backbone over sequences and encodes the payload of a batch. */
  private async preparePayload(seqs: Int32Array[]): Promise<{ payload: Buffer; rows: number; sequences: number }> {
    const { inputs, targets, mask, rows } = splitInputsTargets(seqs);
    const cap = await this.backbone!.capture(inputs, this.config.tappedLayers);
    const t1 = process.hrtime.bigint();
    const payload = encodeBatchPayload({ rows, layers: cap.data, targets, mask }, cap.hiddenSize, this.config.bits as Bits);
    const t2 = process.hrtime.bigint();
    this.t.deviceForwardSeconds += cap.forwardSeconds;
    this.t.quantizeSeconds += Number(t2 - t1) / 1e9;
    return { payload, rows, sequences: seqs.length };
  }

  /** Held-out mean loss with the server's current side network. */
  private async evaluate(conn: ServerConnection, label: 'before' | 'after'): Promise<number> {
    this.setPhase('evaluating');
    const evalId = `${label}-${Date.now()}`;
    const B = this.o.batchSize;
    let lossSum = 0;
    let tokens = 0;
    const pending: Promise<{ message: ServerMessage<'eval/result'> }>[] = [];
    for (let i = 0; i * B < this.data.heldOut.length; i++) {
      this.checkCancelled();
      const { payload, rows } = await this.preparePayload(this.data.heldOut.slice(i * B, (i + 1) * B));
      pending.push(conn.expect('eval/result', (m) => m.evalId === evalId && m.index === i, this.jobId));
      conn.send({ type: 'batch/eval', jobId: this.jobId!, evalId, index: i, rows }, payload);
    }
    for (const r of await Promise.all(pending)) {
      lossSum += r.message.lossSum;
      tokens += r.message.tokens;
    }
    const loss = lossSum / tokens;
    this.log(`held-out loss ${label}: ${loss.toFixed(4)} over ${tokens} tokens`);
    return loss;
  }

  private async train(conn: ServerConnection, startIndex: number): Promise<void> {
    this.setPhase('training');
    const total = this.config.totalSteps;
    const credits = conn.welcome.credits;
    const inflight = new Set<number>();
    let wake: (() => void) | undefined;
    let failure: MobiError | undefined;
    const unsubscribe = conn.subscribe((m) => {
      if (m.type === 'batch/ack' && m.jobId === this.jobId) {
        inflight.delete(m.index);
        this.acks.set(m.index, (this.acks.get(m.index) ?? 0) + 1);
        this.progress.step = m.step;
        this.progress.trainLoss = m.loss;
        this.progress.lossHistory.push([m.step, m.loss]);
        this.t.serverSeconds += m.seconds;
        this.emit();
      } else if (m.type === 'error' && (m.jobId === undefined || m.jobId === this.jobId)) {
        failure = new MobiError('SERVER_ERROR', `The server refused a batch: ${m.code}: ${m.message}`);
      }
      wake?.();
    });
    const lost = new Promise<never>((_, reject) => {
      conn.onLost = (err) => {
        reject(err);
        wake?.();
      };
    });
    lost.catch(() => undefined);
    const waitFor = async (cond: () => boolean): Promise<void> => {
      while (!cond()) {
        if (failure) throw failure;
        if (!conn.isOpen) await lost;
        await Promise.race([new Promise<void>((r) => (wake = r)), lost]);
      }
      if (failure) throw failure;
    };
    this.trainStartedAt = Date.now();
    this.stepsAtSessionStart = this.progress.step;
    const started = process.hrtime.bigint();
    try {
      const B = this.o.batchSize;
      const prepare = (i: number) => this.preparePayload(trainBatchSequences(this.data, B, i));
      let next = startIndex;
      let pending = next < total ? prepare(next) : undefined;
      while (next < total) {
        this.checkCancelled();
        const { payload, rows, sequences } = await pending!;
        // Start the backbone on the next batch now: it runs on a worker thread
        // while this batch waits for credit and the server trains.
        pending = next + 1 < total ? prepare(next + 1) : undefined;
        pending?.catch(() => undefined);
        await waitFor(() => inflight.size < credits);
        const s0 = process.hrtime.bigint();
        conn.send({ type: 'batch/train', jobId: this.jobId!, index: next, rows }, payload);
        this.t.sendSeconds += Number(process.hrtime.bigint() - s0) / 1e9;
        inflight.add(next);
        this.progress.sequencesDone += sequences;
        this.progress.tokensDone += rows;
        next++;
      }
      await waitFor(() => inflight.size === 0);
    } finally {
      unsubscribe();
      conn.onLost = undefined;
      this.t.trainWallSeconds += Number(process.hrtime.bigint() - started) / 1e9;
    }
  }

  private async download(conn: ServerConnection): Promise<void> {
    this.setPhase('downloading');
    const { message, payload } = await conn.request({ type: 'adapter/get', jobId: this.jobId! }, 'adapter/data', (m) => m.jobId === this.jobId);
    if (payload.length !== message.bytes) throw new MobiError('ADAPTER_CORRUPT', 'The adapter arrived incomplete; try again.');
    this.adapterPath = new AdapterStore(this.o.storeDir).save(payload, {
      workspace: path.resolve(this.o.workspace), modelFingerprint: this.fingerprint, jobId: this.jobId!, createdAt: new Date().toISOString(),
      steps: this.progress.step, heldOutLossBefore: this.before!, heldOutLossAfter: this.after!,
    });
    this.log(`adapter stored (${payload.length} bytes)`);
  }

  private async cancelOnServer(): Promise<void> {
    if (!this.jobId || !this.conn?.isOpen || this.finished) return;
    try {
      await Promise.race([this.conn.request({ type: 'job/cancel', jobId: this.jobId }, 'job/done', (m) => m.jobId === this.jobId), sleep(30_000)]);
    } catch {
      // The server keeps its last checkpoint either way.
    }
  }
}
