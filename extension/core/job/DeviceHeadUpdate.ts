import * as fs from 'node:fs';
import * as path from 'node:path';
import { adapterShape, parameterShape } from '../../../common/AdapterConfig';
import { decodeAdapterSliced, encodeAdapterSliced } from '../../../common/AdapterFile';
import { initialHeadUpdate } from '../../../common/headUpdateInit';
import { learningRateAt, stepConstants } from '../../../common/learningRate';
import type { JobConfig, ServerMessage } from '../../../common/messages';
import type { DeviceHead } from '../model/DeviceHead';
import { MobiError } from '../MobiError';

/** Snapshots kept per job: the server's durable checkpoint is at most one interval behind its newest. */
const KEPT_SNAPSHOTS = 3;

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
 * checkpoint steps (and step 0; written by the head's native code on a
 * worker thread, with a checksum) let a resumed job, or one moved to another
 * replica, start both halves from the same step.
 */
export class DeviceHeadUpdate {
  /** The server's step count that A and B are at. */
  private step = 0;
  private jobId: string | undefined;
  /** The batch whose gradient the head holds, not yet stepped, and what waits for its step. */
  private pending: { index: number; done: Promise<void>; resolve: () => void } | undefined;
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
      try {
        await this.head.loadHeadUpdate(file, jobId, serverStep, this.rank);
      } catch (err) {
        throw new MobiError('IO_ERROR', `The head update's snapshot at step ${serverStep} cannot be used (${MobiError.from(err).message}); start a new job.`);
      }
      this.step = serverStep;
      this.log(`head update: resumed at step ${serverStep} from this computer's snapshot`);
      return true;
    }
    if (serverStep !== 0) return false;
    // A new job's B is zero (set natively, without a copy); an update's is its adapter's.
    const start = this.initial ?? { a: initialHeadUpdate(this.model.hiddenSize, 0, this.rank, this.config.seed).a, b: undefined };
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
    const stepped = ack.skipped ? this.skip(ack.step) : this.apply(ack.step, ack.learningRate);
    // A failed step or snapshot fails the job at its next batch (ready).
    void stepped.catch((err: unknown) => void (this.failure ??= MobiError.from(err))).then(pending.resolve);
  }

  private async apply(step: number, learningRate: number): Promise<void> {
    const r = await this.head.stepHeadUpdate({ learningRate, t: step, ...stepConstants({}) });
    if (!r.stepped) this.log(`head update: step ${step} not taken (its gradient is not finite)`);
    await this.skip(step);
  }

  /** A and B are at `step` (stepped or, as the server skipped it, not): snapshotted when the server checkpoints that step. */
  private async skip(step: number): Promise<void> {
    this.step = step;
    if (step % Math.max(1, this.config.checkpointEvery) === 0 || step === this.config.totalSteps) await this.snapshot();
  }

  /** The head update's state at this step, written whole on a worker thread (older snapshots beyond KEPT_SNAPSHOTS removed). */
  private async snapshot(): Promise<void> {
    const step = this.step;
    const file = this.snapshotFile(step);
    await fs.promises.mkdir(path.dirname(file), { recursive: true });
    const partial = `${file}.partial-${process.pid}`;
    await this.head.saveHeadUpdate(partial, this.jobId!, step, this.rank);
    await fs.promises.rename(partial, file);
    const steps = (await fs.promises.readdir(path.dirname(file))).map((f) => /^step-(\d+)\.bin$/.exec(f)?.[1]).filter((x): x is string => x !== undefined).map(Number).sort((x, y) => y - x);
    for (const old of steps.slice(KEPT_SNAPSHOTS)) await fs.promises.rm(this.snapshotFile(old), { force: true });
  }

  private snapshotFile(step: number): string {
    return path.join(headUpdateDir(this.storeDir, this.jobId!), `step-${step}.bin`);
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
    const tensors = contents.header.tensors.map((t) => ({ name: t.name, shape: t.shape, data: contents.tensors.get(t.name)!.data }));
    tensors.push({ name: 'head_a', shape: parameterShape(shape, 'head_a'), data: a }, { name: 'head_b', shape: parameterShape(shape, 'head_b'), data: b });
    return encodeAdapterSliced(fingerprint, { ...config, shape }, meta, tensors);
  }

  /** The job's snapshots, once its adapter is stored. */
  async remove(): Promise<void> {
    if (this.jobId) await fs.promises.rm(headUpdateDir(this.storeDir, this.jobId), { recursive: true, force: true });
  }
}
