import * as fs from 'node:fs';
import * as path from 'node:path';
import { adapterShape, parameterShape } from '../../../common/AdapterConfig';
import { decodeAdapterSliced, encodeAdapterSliced } from '../../../common/AdapterFile';
import { writeFileAtomicSliced } from '../../../common/atomicWrite';
import { initialHeadUpdate } from '../../../common/headUpdateInit';
import { learningRateAt, stepConstants } from '../../../common/learningRate';
import type { JobConfig, ServerMessage } from '../../../common/messages';
import { sha256Sliced, yieldToEventLoop } from '../../../common/sliced';
import type { HeadUpdateMoments } from '../../native/NativeAddon';
import type { DeviceHead } from '../model/DeviceHead';
import { MobiError } from '../MobiError';

const MAGIC = 'MOBIHEAD';
const VERSION = 1;
/** Snapshots kept per job: the server's durable checkpoint is at most one interval behind its newest. */
const KEPT_SNAPSHOTS = 3;

type HeadState = { rank: number; a: Float32Array; b: Float32Array } & HeadUpdateMoments;

/** The device store's folder of a job's head-update snapshots. */
export function headUpdateDir(storeDir: string, jobId: string): string {
  return path.join(storeDir, 'head-updates', jobId);
}

/**
 * A label-private job's head update, trained on this computer (the server
 * never sees A, B or which of B's rows moved: they are indexed by the target
 * ids). Each training batch's gradient is taken with its loss (DeviceHead);
 * the step is applied when the server acknowledges the same step of the side
 * network, at the learning rate it used (a step the server skipped is skipped
 * here too), so both halves stay one optimizer. Snapshots at the server's
 * checkpoint steps (and step 0) let a resumed job, or one moved to another
 * replica, start both halves from the same step.
 */
export class DeviceHeadUpdate {
  /** The server's step count that A and B are at. */
  private step = 0;
  private jobId: string | undefined;
  /** The batch whose gradient the head holds, not yet stepped, and what waits for its step. */
  private pending: { index: number; done: Promise<void>; resolve: () => void } | undefined;
  private saving: Promise<void> = Promise.resolve();
  private failure: MobiError | undefined;

  constructor(
    private readonly head: DeviceHead,
    private readonly config: JobConfig,
    private readonly model: { hiddenSize: number; vocabularySize: number },
    private readonly storeDir: string,
    private readonly log: (line: string) => void,
    /** Where an update starts (its adapter's head update); a new job draws it from its seed. */
    private readonly initial?: { a: Float32Array; b: Float32Array },
  ) {}

  get rank(): number {
    return this.config.headRank ?? 0;
  }

  /**
   * Puts A and B at the server's step `serverStep` of job `jobId` (a session's
   * start): as they are when already there; the one gradient the server
   * applied but whose acknowledgement was lost; the snapshot of that step; or,
   * at step 0 of a job without one, the start (then snapshotted).
   */
  async atStep(jobId: string, serverStep: number): Promise<boolean> {
    const pending = this.pending;
    this.pending = undefined;
    pending?.resolve();
    if (this.jobId === jobId && this.step === serverStep) return true;
    if (this.jobId === jobId && pending && this.step === serverStep - 1 && pending.index === serverStep - 1) {
      await this.apply(serverStep, learningRateAt(serverStep - 1, this.config));
      return true;
    }
    this.jobId = jobId;
    const file = this.snapshotFile(serverStep);
    if (fs.existsSync(file)) {
      const s = await this.read(file, serverStep);
      await this.head.setHeadUpdate(s.rank, s.a, s.b, s);
      this.step = serverStep;
      this.log(`head update: resumed at step ${serverStep} from this computer's snapshot`);
      return true;
    }
    if (serverStep !== 0) return false;
    const start = this.initial ?? initialHeadUpdate(this.model.hiddenSize, this.model.vocabularySize, this.rank, this.config.seed);
    await this.head.setHeadUpdate(this.rank, start.a, start.b);
    this.step = 0;
    await this.snapshot();
    return true;
  }

  /**
   * A session's start: A and B at the server's step; where this computer has
   * no state for that step (the device process was restarted after the server
   * trained on), the job is opened again from the server's last checkpoint,
   * whose step this computer snapshotted. Returns the job/ready to go on from.
   */
  async settle<R extends { jobId: string; step: number }>(ready: R, fromCheckpoint: () => Promise<R>): Promise<R> {
    if (await this.atStep(ready.jobId, ready.step)) return ready;
    const again = await fromCheckpoint();
    this.log(`head update: no state here at step ${ready.step}; the job goes on from its checkpoint at step ${again.step}`);
    if (await this.atStep(again.jobId, again.step)) return again;
    throw new MobiError('IO_ERROR', `The head update of this label-private job at step ${again.step} is not on this computer (its snapshots are in the device store's head-updates folder); start a new job.`);
  }

  /** Batch `index`'s gradient is in the head (DeviceHead.lossAndGradient); its step waits for the server's acknowledgement. */
  gradientTaken(index: number): void {
    let resolve = (): void => undefined;
    const done = new Promise<void>((r) => (resolve = r));
    this.pending = { index, done, resolve };
  }

  /** Resolves once the gradient taken before has been stepped (or dropped): the next batch's loss needs A and B after it. */
  async ready(): Promise<void> {
    await this.pending?.done;
    if (this.failure) throw this.failure;
  }

  /** The server applied (or skipped) step ack.step with batch ack.index: the same here. */
  onAck(ack: Pick<ServerMessage<'batch/ack'>, 'index' | 'step' | 'learningRate' | 'skipped'>): void {
    const pending = this.pending;
    if (!pending || pending.index !== ack.index) return; // a resend's acknowledgement: nothing was trained
    this.pending = undefined;
    const stepped = ack.skipped ? (this.step = ack.step, Promise.resolve()) : this.apply(ack.step, ack.learningRate);
    void stepped.then(pending.resolve, pending.resolve);
  }

  private async apply(step: number, learningRate: number): Promise<void> {
    const r = await this.head.stepHeadUpdate({ learningRate, t: step, ...stepConstants({}) });
    if (!r.stepped) this.log(`head update: step ${step} not taken (its gradient is not finite)`);
    this.step = step;
    if (step % Math.max(1, this.config.checkpointEvery) === 0 || step === this.config.totalSteps) await this.snapshot();
  }

  /**
   * The head update's state at this step, copied now and written whole in the
   * background (older snapshots beyond KEPT_SNAPSHOTS removed); a failed write
   * fails the job at its next batch.
   */
  private async snapshot(): Promise<void> {
    const step = this.step;
    const state = await this.head.exportHeadUpdate();
    this.saving = this.saving.then(async () => {
      await this.write(this.snapshotFile(step), step, state);
      const dir = headUpdateDir(this.storeDir, this.jobId!);
      const steps = fs.readdirSync(dir).map((f) => /^step-(\d+)\.bin$/.exec(f)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((a, b) => b - a);
      for (const old of steps.slice(KEPT_SNAPSHOTS)) fs.rmSync(this.snapshotFile(old), { force: true });
    });
    this.saving.catch((err: unknown) => (this.failure ??= MobiError.from(err)));
  }

  private snapshotFile(step: number): string {
    return path.join(headUpdateDir(this.storeDir, this.jobId!), `step-${step}.bin`);
  }

  private async write(file: string, step: number, s: HeadState): Promise<void> {
    const parts = [s.a, s.b, s.ma, s.va, s.mb, s.vb];
    const header = Buffer.from(JSON.stringify({ version: VERSION, jobId: this.jobId, step, rank: s.rank, d: this.model.hiddenSize, vocab: this.model.vocabularySize }), 'utf8');
    const start = Math.ceil((12 + header.length) / 4) * 4;
    const bytes = Buffer.allocUnsafe(start + parts.reduce((n, p) => n + p.byteLength, 0) + 32);
    bytes.write(MAGIC, 0, 'latin1');
    bytes.writeUInt32LE(header.length, 8);
    header.copy(bytes, 12);
    bytes.fill(0, 12 + header.length, start);
    let at = start;
    for (const p of parts) {
      Buffer.from(p.buffer, p.byteOffset, p.byteLength).copy(bytes, at);
      at += p.byteLength;
      await yieldToEventLoop();
    }
    (await sha256Sliced(bytes.subarray(0, at))).copy(bytes, at);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await writeFileAtomicSliced(file, bytes);
  }

  private async read(file: string, step: number): Promise<HeadState> {
    const bytes = await fs.promises.readFile(file);
    const bad = (why: string): MobiError => new MobiError('IO_ERROR', `The head update's snapshot at step ${step} is damaged (${why}); start a new job.`);
    if (bytes.length < 44 || bytes.toString('latin1', 0, 8) !== MAGIC) throw bad('not a snapshot');
    if (!(await sha256Sliced(bytes.subarray(0, bytes.length - 32))).equals(bytes.subarray(bytes.length - 32))) throw bad('checksum mismatch');
    const headerLength = bytes.readUInt32LE(8);
    const h = JSON.parse(bytes.toString('utf8', 12, 12 + headerLength)) as { version: number; jobId: string; step: number; rank: number; d: number; vocab: number };
    if (h.version !== VERSION || h.jobId !== this.jobId || h.step !== step || h.rank !== this.rank || h.d !== this.model.hiddenSize || h.vocab !== this.model.vocabularySize) throw bad('another job, step or shape');
    const na = h.d * h.rank;
    const nb = h.vocab * h.rank;
    let at = Math.ceil((12 + headerLength) / 4) * 4;
    if (bytes.length !== at + 4 * (3 * na + 3 * nb) + 32) throw bad('wrong size');
    const take = (n: number): Float32Array => {
      const out = new Float32Array(n);
      Buffer.from(out.buffer).set(bytes.subarray(at, at + 4 * n));
      at += 4 * n;
      return out;
    };
    const [a, b] = [take(na), take(nb)];
    return { rank: h.rank, a, b, ma: take(na), va: take(na), mb: take(nb), vb: take(nb) };
  }

  /**
   * The finished adapter: the server's side network with this head update
   * added (head_a, head_b, and the shape that has them), as a standard-mode
   * job's adapter holds it.
   */
  async merged(serverAdapter: Uint8Array, fingerprint: string): Promise<Buffer> {
    await this.ready();
    const { a, b } = await this.head.exportHeadUpdate();
    const contents = await decodeAdapterSliced(serverAdapter, fingerprint);
    const { config, meta } = contents.header;
    const shape = adapterShape(config.job, this.model);
    const tensors = [...contents.header.tensors.map((t) => ({ name: t.name, shape: t.shape, data: contents.tensors.get(t.name)!.data }))];
    tensors.push({ name: 'head_a', shape: parameterShape(shape, 'head_a'), data: a }, { name: 'head_b', shape: parameterShape(shape, 'head_b'), data: b });
    return encodeAdapterSliced(fingerprint, { ...config, shape }, meta, tensors);
  }

  /** The job's snapshots, once its adapter is stored. */
  async remove(): Promise<void> {
    await this.saving.catch(() => undefined);
    if (this.jobId) fs.rmSync(headUpdateDir(this.storeDir, this.jobId), { recursive: true, force: true });
  }
}
