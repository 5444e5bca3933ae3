import * as path from 'node:path';
import { jobShape } from '../../../common/AdapterConfig';
import { jobConfigProblem } from '../../../common/jobConfigProblem';
import type { ResolvedJobSettings } from '../../../common/jobSettings';
import type { JobConfig, ModelSpec, ServerMessage } from '../../../common/messages';
import { AdapterStore } from '../store/AdapterStore';
import { AdapterDownload, downloadAdapter } from '../store/AdapterDownload';
import { maxAdapterBytes, maxAdapterBytesFor } from '../../../common/AdapterFile';
import { Backbone } from '../model/Backbone';
import { batchesPerEpoch, buildDatasetAsync, Dataset, firstTrainSequences } from '../workspace/dataset';
import { fileDigests, listedSequences, novelSequences, prepareUpdate } from './updatePlan';
import { newJobConfig } from './newJobConfig';
import { trainingContextOf } from './trainingContext';
import { EmbeddedServerKeeper } from '../connection/EmbeddedServer';
import { MobiError } from '../MobiError';
import { modelFingerprint } from '../model/modelFingerprint';
import { ScanReport, scanWorkspaceAsync } from '../workspace/scanWorkspace';
import { ServerConnection } from '../connection/ServerConnection';
import { DeviceHeadUpdate } from './DeviceHeadUpdate';
import { ActivationStream, StreamTimings } from './ActivationStream';
import { adoptRecord, FineTuneOptions, ResolvedFineTuneOptions, resolveFineTuneOptions, tunedSettings } from './FineTuneOptions';
import type { JobContext } from './JobContext';
import { JobPhase, ProgressTracker } from './JobProgress';
import { JobRecordStore } from './JobRecordStore';
import { followable, ReconnectPolicy, sleep } from './ReconnectPolicy';
import { headDigest } from './headContent';
import { uploadHead } from './uploadHead';
import { DeviceHead } from '../model/DeviceHead';
import { backboneInit } from './backboneInit';

export type { FineTuneOptions } from './FineTuneOptions';
export { tappedLayers } from './newJobConfig';
export type { JobPhase, JobProgress } from './JobProgress';

export interface FineTuneResult {
  jobId: string;
  steps: number;
  trainTokens: number;
  heldOutLossBefore: number;
  heldOutLossAfter: number;
  /** Held-out loss in fill-in-the-middle order, before and after (models with FIM tokens only). */
  heldOutFimLossBefore?: number;
  heldOutFimLossAfter?: number;
  adapter: string;
  model: string;
  bytesSent: number;
  seconds: number;
  /** Acknowledgements received per batch index (resent batches count again). */
  acks: Map<number, number>;
  timings: StreamTimings & { wallSeconds: number };
  bytesPerToken: number;
  config: JobConfig;
  scan: ScanReport;
  /** The activation cache's use: batches (training and held-out) wholly from it and not, damaged entries found, and sequences from it and computed. */
  cache?: { hits: number; misses: number; damaged: number; sequenceHits: number; sequenceMisses: number };
  /** Label-private: tokens whose gradient took the head's dense product over the whole vocabulary, of all with a gradient. */
  head?: { denseTokens: number; gradientTokens: number; candidateRows?: NonNullable<ActivationStream['candidates']>['stats'] };
}

/** Longest wait for the server to confirm a cancellation, milliseconds. */
const CANCEL_TIMEOUT_MS = 30_000;

/** What the job has set up before it talks to a server. */
interface Workload {
  scan: ScanReport;
  backbone: Backbone;
  fingerprint: string;
  /** sha256 of the head upload's content (headContent.ts). */
  headDigest: string;
  data: Dataset;
  config: JobConfig;
  /** A new job's starting values from the backbone (config.initFromBackbone), sent with job/create. */
  start?: Float32Array;
  stream: ActivationStream;
  /** The files' digests, kept with the adapter (what an update compares with). */
  digests: Record<string, string>;
  /** An update: the adapter it starts from (its job, and the sequences it was trained on). */
  updateOf?: { jobId: string; sequences?: string[] };
}

/**
 * One fine-tuning job, device side, as a script: scan and tokenize the
 * workspace, load the backbone, then one server session (reconnecting after a
 * drop and resuming from the server's checkpoint): upload the head if the
 * server lacks it, create or resume the job, evaluate before, stream the
 * training batches, evaluate after, finish, download and store the adapter.
 * The parts live beside it: options, progress, job records, reconnection,
 * head upload and the activation stream.
 */
export class FineTuneJob {
  private readonly o: ResolvedFineTuneOptions;
  private readonly progress: ProgressTracker;
  private readonly records: JobRecordStore;
  private readonly ctx: JobContext;
  /** Owned by the job once loaded: run() disposes it whatever happens. */
  private backbone: Backbone | undefined;
  private head: DeviceHead | undefined;
  private work: Workload | undefined;
  private embedded: EmbeddedServerKeeper | undefined;
  private conn: ServerConnection | undefined;
  /** The replica a team server said trains the job: the next connection goes there. */
  private redirect: string | undefined;
  /** Bytes sent over earlier connections of this job. */
  private bytesSentBefore = 0;
  private jobId: string | undefined;
  private before: number | undefined;
  private after: number | undefined;
  private fimBefore: number | undefined;
  private fimAfter: number | undefined;
  private adapterPath: string | undefined;
  /** Training tokens of the whole job, as the server counted them (a resumed job's earlier sessions included). */
  private trainTokens: number | undefined;
  private finished = false;
  private readonly acks = new Map<number, number>();

  constructor(private readonly given: FineTuneOptions) {
    this.o = resolveFineTuneOptions(given);
    this.records = new JobRecordStore(this.o.storeDir);
    this.progress = new ProgressTracker(
      { bytesSent: () => this.bytesSentBefore + (this.conn?.bytesSent ?? 0), deviceForwardSeconds: () => this.work?.stream.timings.deviceForwardSeconds ?? 0,
        deviceForwardTokens: () => this.work?.stream.timings.deviceForwardTokens ?? 0 },
      this.o.onProgress,
    );
    this.ctx = {
      log: (line) => this.o.log?.(line),
      setPhase: (phase) => this.setPhase(phase),
      checkCancelled: () => {
        if (this.o.signal?.aborted) throw new MobiError('CANCELLED', 'Fine-tuning was cancelled.');
      },
      signal: this.o.signal,
    };
  }

  get phase(): JobPhase {
    return this.progress.phase;
  }

  private setPhase(phase: JobPhase): void {
    this.ctx.log(`phase ${phase}`);
    this.progress.setJobId(this.jobId);
    this.progress.setLosses(this.before, this.after);
    this.progress.setPhase(phase);
    this.saveRecord();
  }

  /** Keeps this device's record of the job current (for resume and `mobillm jobs`). */
  private saveRecord(): void {
    if (!this.jobId || !this.work) return;
    try {
      this.records.save({
        jobId: this.jobId, serverUrl: this.o.server?.url, workspace: path.resolve(this.o.workspace), model: this.o.model, fingerprint: this.work.fingerprint,
        settings: tunedSettings(this.o), config: this.work.config, heldOutLossBefore: this.before, heldOutLossAfter: this.after,
        phase: this.progress.phase, step: this.progress.current.step,
      });
    } catch (err) {
      this.ctx.log(`could not update the job record (${MobiError.from(err).code})`);
    }
  }

  async run(): Promise<FineTuneResult> {
    const started = Date.now();
    try {
      const work = await this.setUp();
      const reconnect = new ReconnectPolicy(this.ctx, this.o.reconnectTimeoutMs, () => this.jobId !== undefined);
      await reconnect.run(
        () => this.session(work, reconnect),
        (err) => {
          if (this.conn) this.bytesSentBefore += this.conn.bytesSent;
          this.conn?.close();
          this.conn = undefined;
          this.redirect = err.code === 'JOB_MOVED' ? followable(this.o.server?.url, err.location) : undefined;
          if (err.code === 'JOB_MOVED') this.ctx.log(this.redirect ? 'the job is on another server replica; following it' : 'the job is on another server replica; reconnecting through the configured address');
        },
      );
      const wallSeconds = (Date.now() - started) / 1000;
      const cache = work.stream.cache;
      if (cache) this.ctx.log(`activation cache: ${cache.sequenceHits} sequences from it, ${cache.sequenceMisses} computed, ${cache.damaged} damaged entries dropped; ${cache.count} kept (${cache.bytes} bytes)`);
      this.setPhase('done');
      const p = this.progress.current;
      return {
        jobId: this.jobId!,
        steps: p.step,
        trainTokens: this.trainTokens ?? p.tokensDone,
        heldOutLossBefore: this.before!,
        heldOutLossAfter: this.after!,
        heldOutFimLossBefore: this.fimBefore,
        heldOutFimLossAfter: this.fimAfter,
        adapter: this.adapterPath!,
        model: work.backbone.info.path,
        bytesSent: p.bytesSent,
        seconds: wallSeconds,
        acks: this.acks,
        timings: { ...work.stream.timings, wallSeconds },
        bytesPerToken: p.tokensDone > 0 ? p.bytesSent / p.tokensDone : 0,
        config: work.config,
        scan: work.scan,
        cache: cache && { hits: cache.hits, misses: cache.misses, damaged: cache.damaged, sequenceHits: cache.sequenceHits, sequenceMisses: cache.sequenceMisses },
        head: this.head && { ...this.head.counts, candidateRows: work.stream.candidates?.stats },
      };
    } catch (err) {
      const e = MobiError.from(err);
      if (e.code === 'CANCELLED') {
        await this.cancelOnServer();
        this.setPhase('cancelled');
      } else if (e.code !== 'UP_TO_DATE') {
        this.setPhase('failed');
      }
      throw e;
    } finally {
      this.conn?.close();
      this.backbone?.dispose();
      this.head?.dispose();
      await this.embedded?.stop();
    }
  }

  /** Scans and confirms, loads the backbone, tokenizes and splits, and settles the job's config (or the resumed job's record). */
  private async setUp(): Promise<Workload> {
    const resumed = this.o.resumeJobId ? this.records.load(this.o.resumeJobId) : undefined;
    if (resumed) adoptRecord(this.given, this.o, resumed);
    const settings = tunedSettings(this.o) as ResolvedJobSettings;
    this.progress.setSettings(settings);
    this.setPhase('scanning');
    const scan = await scanWorkspaceAsync(this.o.workspace, this.o.scan);
    this.ctx.log(`scan: ${scan.files.length} files, ${scan.includedBytes} bytes included`);
    if (scan.files.length === 0) {
      throw new MobiError('EMPTY_WORKSPACE', `No usable source files in ${this.o.workspace} (binary, ignored, secret, too large or empty files are skipped).`);
    }
    if (this.o.confirm && !(await this.o.confirm(scan, settings))) throw new MobiError('CANCELLED', 'Fine-tuning was cancelled before it started.');
    this.ctx.checkCancelled();
    let backbone = await this.openBackbone();
    const fingerprint = await modelFingerprint(backbone.info.path);
    const digest = await headDigest(backbone, fingerprint, this.o.storeDir);
    // An update: the files changed since the workspace's adapter, and that adapter's weights to start from.
    const update = this.o.update ? await prepareUpdate(new AdapterStore(this.o.storeDir).find(this.o.workspace, fingerprint), scan.files, {
      fingerprint, model: backbone.info, maxBytes: maxAdapterBytesFor(backbone.info), resumed: resumed !== undefined,
    }, this.o) : undefined;
    if (update) this.o.onUpdatePlan?.('none' in update ? { none: update.none } : { changed: update.plan.changed, replayed: update.plan.replayed, unchanged: update.plan.unchanged, deleted: update.plan.deleted, since: update.from.meta.createdAt });
    const plan = update && !('none' in update) ? update : undefined;
    const adopted = plan?.start?.config;
    if (adopted && (adopted.seqLen !== this.o.seqLen || adopted.batchSize !== this.o.batchSize || adopted.seed !== this.o.seed)) {
      // An update keeps its adapter's sequences and split.
      Object.assign(this.o, { seqLen: adopted.seqLen, batchSize: adopted.batchSize, seed: adopted.seed });
      backbone.dispose();
      backbone = await this.openBackbone();
    }
    const { seqLen, batchSize } = this.o;
    const info = backbone.info;
    const { fimPre, fimSuf, fimMid } = backbone.nativeInfo;
    const vocab = info.vocabularySize;
    const fim = [fimPre, fimSuf, fimMid].every((t) => t >= 0 && t < vocab) ? { pre: fimPre, suf: fimSuf, mid: fimMid } : undefined;
    let data = await buildDatasetAsync(plan?.plan.files ?? scan.files, (text) => backbone.tokenize(text), {
      seqLen, seed: this.o.seed, heldOutFraction: this.o.heldOutFraction, maxHeldOutSequences: this.o.maxHeldOutSequences, fim, fimRate: this.o.fimRate, heldOut: plan?.plan.heldOut,
      context: await trainingContextOf(backbone, this.o.workspace, scan.files, this.o, seqLen),
    });
    if (plan) data = novelSequences(data, plan.plan.changed, plan.from.meta.sequences);
    const perStep = plan?.from.meta.trainSecondsPerStep;
    // Within a time budget: the training sequences that fit at the adapter's pace (the changed files' come first).
    if (plan && this.o.timeBudget > 0 && perStep) data = firstTrainSequences(data, Math.max(batchSize, Math.floor(this.o.timeBudget / perStep) * batchSize));
    const config: JobConfig = resumed?.config ?? newJobConfig(this.o, info.layers, batchesPerEpoch(data, batchSize), plan?.start?.config);
    const problem = resumed ? undefined : jobConfigProblem(config, backbone.info, (k) => this.o.describeOption?.(k) ?? k);
    if (problem) throw new MobiError('BAD_ARGUMENT', problem.message);
    const start = resumed ? undefined : plan?.start?.values ?? (await this.startValues(backbone, config));
    if (start && !plan) config.initFromBackbone = true;
    this.progress.setTotalSteps(config.totalSteps);
    if (resumed) {
      if (resumed.fingerprint !== fingerprint) throw new MobiError('MODEL_MISMATCH', 'The job was started with a different model file; select that model to resume it.');
      this.jobId = resumed.jobId;
      this.before = resumed.heldOutLossBefore;
    }
    // Label-private: the model's own head runs here (loaded once per job).
    this.head = config.labelPrivate ? await DeviceHead.open(backbone.info.path, backbone.info.head, this.o.threads) : undefined;
    const stream = new ActivationStream(backbone, data, config, this.ctx, this.head, !this.o.exactHead);
    // Label-private with a head update: A and B are trained here (DeviceHeadUpdate.ts).
    if (this.head && config.headRank) stream.headUpdate = new DeviceHeadUpdate(this.head, config, info, this.o.storeDir, (l) => this.ctx.log(l), plan?.start?.head);
    await stream.useCache(this.o.storeDir, fingerprint, this.o.activationCacheGiB * 2 ** 30);
    this.work = { scan, backbone, fingerprint, headDigest: digest, data, config, start, stream, digests: fileDigests(scan.files), updateOf: plan && { jobId: plan.from.meta.jobId, sequences: plan.from.meta.sequences } };
    this.ctx.log(`data: ${data.train.length} train / ${data.heldOut.length} held-out sequences, ${config.totalSteps} steps`);
    return this.work;
  }

  private async openBackbone(): Promise<Backbone> {
    const { seqLen, batchSize } = this.o;
    this.backbone = await Backbone.open(this.o.model, { contextSize: seqLen * batchSize, maxSequences: batchSize, threads: this.o.threads });
    return this.backbone;
  }

  /**
   * A new job's starting values from the backbone's weights (backboneInit.ts),
   * when asked for (random values by default: on the quality benchmark's fair
   * stand-in, side network 2 from random values reached 4.963 against 5.203
   * from the backbone's weights, bench/results/quality.json).
   */
  private async startValues(backbone: Backbone, config: JobConfig): Promise<Float32Array | undefined> {
    if (this.o.initFromBackbone !== true) return undefined;
    return backboneInit(backbone.info.path, backbone.info.headTensor, jobShape(config, backbone.info));
  }

  private async connect(work: Workload, reconnect: ReconnectPolicy): Promise<ServerConnection> {
    this.setPhase('connecting');
    let url: string;
    let token: string;
    if (this.o.server) {
      ({ url, token } = this.o.server);
      // One attempt at the replica the server named; a failure there comes back to the configured address.
      url = this.redirect ?? url;
      this.redirect = undefined;
    } else {
      // A child process on this computer, started again should it end (the job resumes from its last checkpoint).
      this.embedded ??= new EmbeddedServerKeeper(this.o.storeDir, (line) => this.ctx.log(line));
      ({ url, token } = await this.embedded.get());
    }
    const info = work.backbone.info;
    const spec: ModelSpec = { fingerprint: work.fingerprint, architecture: info.architecture, layers: info.layers, hiddenSize: info.hiddenSize, vocabularySize: info.vocabularySize, normEpsilon: info.normEpsilon, headDigest: work.headDigest, ...(info.head.softCap > 0 ? { softCap: info.head.softCap } : {}), ...(info.head.norm === 'layer' ? { normKind: 'layer' } : {}) };
    const conn = await ServerConnection.open(url, token, spec, { onFrameSent: this.o.onFrameSent });
    this.conn = conn;
    reconnect.connected();
    this.ctx.log(`connected (server backend ${conn.welcome.backend}, credits ${conn.welcome.credits})`);
    return conn;
  }

  /** One connected session: everything from hello to the stored adapter, resuming where the job stands. */
  private async session(work: Workload, reconnect: ReconnectPolicy): Promise<void> {
    const conn = await this.connect(work, reconnect);
    // A label-private job needs no head on the server.
    if (!conn.welcome.headCached && !work.config.labelPrivate) await uploadHead(conn, work.backbone, this.ctx);
    let ready: ServerMessage<'job/ready'>;
    if (this.jobId) {
      const jobId = this.jobId;
      ready = (await conn.request({ type: 'job/resume', jobId })).message;
    } else {
      // initFromBackbone: the starting values, a reduced copy of this model's weights, go with the request.
      const payload = work.start ? new Uint8Array(work.start.buffer, work.start.byteOffset, work.start.byteLength) : undefined;
      ready = (await conn.request({ type: 'job/create', name: path.basename(path.resolve(this.o.workspace)), config: work.config }, payload)).message;
      this.jobId = ready.jobId;
      this.saveRecord();
    }
    if (work.stream.headUpdate) ready = await work.stream.headUpdate.settle(ready, async () => (await conn.request({ type: 'job/resume', jobId: ready.jobId, fromCheckpoint: true })).message);
    const jobId = ready.jobId;
    this.progress.setStep(ready.step);
    if (ready.state !== 'finished') {
      if (this.before === undefined) {
        this.before = await work.stream.evaluate(conn, jobId, 'before');
        if (work.data.heldOutFim.length > 0) this.fimBefore = await work.stream.evaluate(conn, jobId, 'before', 'fim');
        this.saveRecord();
      }
      this.progress.startTraining();
      if (this.o.update && this.o.timeBudget > 0) work.stream.stopAt ??= Date.now() + this.o.timeBudget * 1000;
      await work.stream.train(
        conn, jobId, ready.nextIndex,
        (sequences, rows) => this.progress.batchSent(sequences, rows),
        (ack) => {
          this.acks.set(ack.index, (this.acks.get(ack.index) ?? 0) + 1);
          if (ack.skipped) this.ctx.log(`step ${ack.step} skipped by the server (non-finite loss or gradient)`);
          else this.progress.stepAcknowledged(ack.step, ack.loss);
        },
        (ahead) => this.progress.serverBusy(ahead),
      );
      if (this.after === undefined) {
        this.after = await work.stream.evaluate(conn, jobId, 'after');
        if (work.data.heldOutFim.length > 0) this.fimAfter = await work.stream.evaluate(conn, jobId, 'after', 'fim');
      }
      await conn.request({ type: 'job/finish', jobId });
    } else if (this.after === undefined) {
      throw new MobiError('SERVER_ERROR', 'The job finished on the server before its held-out evaluation; start a new job.');
    }
    this.finished = true;
    await this.download(conn, work, jobId);
  }

  private async download(conn: ServerConnection, work: Workload, jobId: string): Promise<void> {
    this.setPhase('downloading');
    const partial = new AdapterDownload(this.o.storeDir, jobId);
    const fromServer = await downloadAdapter(conn, partial, jobId, maxAdapterBytes(jobShape(work.config, work.backbone.info)));
    const payload = work.stream.headUpdate ? await work.stream.headUpdate.merged(fromServer, work.fingerprint) : fromServer;
    const stored = await new AdapterStore(this.o.storeDir).save(payload, {
      workspace: path.resolve(this.o.workspace), modelFingerprint: work.fingerprint, jobId, createdAt: new Date().toISOString(),
      steps: this.progress.current.step, heldOutLossBefore: this.before!, heldOutLossAfter: this.after!,
      files: work.digests, updateOf: work.updateOf?.jobId, sequences: listedSequences(work.data, work.updateOf?.sequences),
      trainSecondsPerStep: this.progress.current.step > 0 ? work.stream.timings.trainWallSeconds / this.progress.current.step : undefined,
    });
    partial.remove();
    await work.stream.headUpdate?.remove();
    this.adapterPath = stored.file;
    const meta = stored.header.meta;
    if (Number.isSafeInteger(meta.trainTokens)) this.trainTokens = meta.trainTokens as number;
    this.ctx.log(`adapter stored (${payload.length} bytes)`);
  }

  private async cancelOnServer(): Promise<void> {
    const jobId = this.jobId;
    if (!jobId || !this.conn?.isOpen || this.finished) return;
    try {
      await Promise.race([this.conn.request({ type: 'job/cancel', jobId }), sleep(CANCEL_TIMEOUT_MS)]);
    } catch {
      // The server keeps its last checkpoint either way.
    }
  }
}
