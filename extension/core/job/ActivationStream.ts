import { Bits, bytesPerRow, dequantizeRows, joinBits, quantizeRows } from '../../../common/ActivationQuantizer';
import { encodePayloadSliced, labelsPayload } from '../../../common/batchPayload';
import type { JobConfig, ServerMessage } from '../../../common/messages';
import type { Backbone } from '../model/Backbone';
import type { DeviceHead } from '../model/DeviceHead';
import type { DeviceHeadUpdate } from './DeviceHeadUpdate';
import { batchesPerEpoch, Dataset, splitInputsTargets, trainBatchIndices } from '../workspace/dataset';
import { ActivationCache, activationCacheDir, sequenceKey } from './ActivationCache';
import { BufferPool } from './BufferPool';
import { CandidateRows } from './CandidateRows';
import type { ServerConnection } from '../connection/ServerConnection';
import { CreditWindow } from './CreditWindow';
import type { JobContext } from './JobContext';
import { MobiError } from '../MobiError';

/** Where the device's time goes, in seconds (summed over the job). */
export interface StreamTimings {
  /** Backbone forwards of training batches, and their tokens. */
  deviceForwardSeconds: number;
  deviceForwardTokens: number;
  /** Backbone forwards of held-out batches. */
  evalForwardSeconds: number;
  quantizeSeconds: number;
  sendSeconds: number;
  serverSeconds: number;
  /** Label-private: the model's head, loss and gradient on the device. */
  headSeconds: number;
  trainWallSeconds: number;
}

/** One batch ready for the wire. */
interface EncodedBatch {
  payload: Buffer;
  /** Predicted tokens in the batch. */
  rows: number;
  /** The sequences' lengths (summing to rows), for a side network that attends within them. */
  lengths: number[];
  sequences: number;
  /** Label-private: what stays on the device for the loss: the last layer's hidden states [rows][d], the targets, the mask. */
  kept?: { last: Float32Array; targets: Int32Array; mask: Uint8Array };
  /** A training batch's sequences (their indices in the dataset). */
  sequenceIds?: number[];
}

/**
 * The data path of a job: the backbone's forward over a batch with capture,
 * quantized into a batch payload, streamed to the server. Training batches
 * flow under the server's credits, with the backbone already running the next
 * batch while the server trains on this one; held-out batches are evaluated,
 * not trained.
 */
export class ActivationStream {
  /** A batch's buffers (captured layers, payload, encoded layers, label-private last layer, join input and gradient), each given back once sent or used. */
  private readonly pool = new BufferPool();
  readonly timings: StreamTimings = { deviceForwardSeconds: 0, deviceForwardTokens: 0, evalForwardSeconds: 0, quantizeSeconds: 0, sendSeconds: 0, serverSeconds: 0, headSeconds: 0, trainWallSeconds: 0 };
  /** Date.now() after which no more training batch is sent (an update's time budget); the job then evaluates and finishes. */
  stopAt: number | undefined;
  /** The activation cache on this computer (useCache). */
  cache: ActivationCache | undefined;
  /** Label-private with a head update: A and B, trained here beside the server's side network. */
  headUpdate: DeviceHeadUpdate | undefined;
  /** Label-private later epochs over candidate rows of the head (CandidateRows.ts), unless the job wants the exact head. */
  readonly candidates: CandidateRows | undefined;

  constructor(
    private readonly backbone: Backbone,
    private readonly data: Dataset,
    private readonly config: JobConfig,
    private readonly ctx: JobContext,
    /** The model's own head, for a label-private job (config.labelPrivate). */
    private readonly head?: DeviceHead,
    candidateRows = true,
  ) {
    if (config.labelPrivate && !head) throw new RangeError('a label-private stream needs the device head');
    if (head && candidateRows) this.candidates = new CandidateRows(batchesPerEpoch(data, config.batchSize), data.train, head.vocabularySize);
  }

  private get bits(): Bits {
    return this.config.bits;
  }

  /**
   * Keeps the activations of the sequences this job runs over in the device
   * store's cache for this model, layers, bits and mode (up to `budgetBytes`
   * for all jobs together), and takes every batch's kept sequences from there:
   * later epochs, the held-out set's second evaluation and later jobs (an
   * update's unchanged files) skip their forward pass.
   */
  async useCache(storeDir: string, fingerprint: string, budgetBytes: number): Promise<void> {
    if (this.cache || budgetBytes <= 0) return;
    const key = { fingerprint, tappedLayers: this.config.tappedLayers, bits: this.bits, keepLast: this.config.labelPrivate === true };
    this.cache = await ActivationCache.open(activationCacheDir(storeDir, key), budgetBytes, this.config.tappedLayers.length, this.backbone.info.hiddenSize, this.bits, key.keepLast);
  }

  /** Training batch `index`. */
  private async trainBatch(index: number): Promise<EncodedBatch> {
    const ids = trainBatchIndices(this.data, this.config.batchSize, index);
    const batch = await this.batchOf(splitInputsTargets(ids.map((i) => this.data.train[i]!), ids.map((i) => this.data.trainMasked[i])), 'train');
    return { ...batch, sequenceIds: ids };
  }

  /** A batch: its sequences the cache keeps from there, the others by a forward (and then kept). */
  private async batchOf(split: ReturnType<typeof splitInputsTargets>, use: 'train' | 'eval'): Promise<EncodedBatch> {
    const cache = this.cache;
    if (!cache) return this.encodeBatch(split, use);
    const { inputs, targets, mask, rows } = split;
    const lengths = inputs.map((x) => x.length);
    const keys = inputs.map(sequenceKey);
    const blocks = await cache.lookup(keys, lengths);
    const missing = blocks.flatMap((b, k) => (b ? [] : [k]));
    let fresh: { encoded: Buffer; layers: Float32Array[] } | undefined;
    const labelPrivate = this.config.labelPrivate === true;
    if (missing.length > 0) {
      const sub = missing.map((k) => inputs[k]!);
      const cap = await this.backbone.capture(sub, this.config.tappedLayers, this.pool);
      const t1 = process.hrtime.bigint();
      const subLengths = sub.map((x) => x.length);
      const layers = await encodePayloadSliced(cap.data, cap.lengths.reduce((a, b) => a + b, 0), cap.hiddenSize, this.bits, undefined, (n) => this.pool.take(n));
      fresh = { encoded: layers, layers: cap.data };
      const cut = cache.cut(layers, subLengths, labelPrivate ? cap.data[cap.data.length - 1] : undefined);
      this.counted(use, cap.forwardSeconds, subLengths.reduce((a, b) => a + b, 0), t1);
      await Promise.all(missing.map((k, j) => cache.store(keys[k]!, cut[j]!)));
      missing.forEach((k, j) => (blocks[k] = cut[j]));
    }
    const got = cache.assemble(blocks.map((b) => b!), this.pool);
    // The fresh blocks (views of the payload and of the last layer) are written and copied: their buffers go back.
    if (fresh) [fresh.encoded, ...fresh.layers].forEach((b) => this.pool.give(b));
    let payload = got.layers;
    if (!labelPrivate) {
      payload = Buffer.concat([got.layers, labelsPayload(targets, mask)]);
      this.pool.give(got.layers);
    }
    return { payload, rows, lengths, sequences: inputs.length, kept: labelPrivate ? { last: got.last!, targets, mask } : undefined };
  }

  /** Adds a forward of `tokens` to the timings, and the quantization since `quantizeStart`. */
  private counted(use: 'train' | 'eval', forwardSeconds: number, tokens: number, quantizeStart: bigint): void {
    if (use === 'train') {
      this.timings.deviceForwardSeconds += forwardSeconds;
      this.timings.deviceForwardTokens += tokens;
    } else this.timings.evalForwardSeconds += forwardSeconds;
    this.timings.quantizeSeconds += Number(process.hrtime.bigint() - quantizeStart) / 1e9;
  }

  /** Runs the backbone over a batch's sequences (split into inputs and targets) with capture and encodes the batch payload. */
  private async encodeBatch({ inputs, targets, mask, rows }: ReturnType<typeof splitInputsTargets>, use: 'train' | 'eval'): Promise<EncodedBatch> {
    const lengths = inputs.map((x) => x.length);
    const cap = await this.backbone.capture(inputs, this.config.tappedLayers, this.pool);
    const t1 = process.hrtime.bigint();
    const labelPrivate = this.config.labelPrivate === true;
    // Quantized a layer at a time, the event loop free between layers (the extension host's thread).
    const payload = await encodePayloadSliced(cap.data, rows, cap.hiddenSize, this.bits, labelPrivate ? undefined : { targets, mask }, (n) => this.pool.take(n));
    this.counted(use, cap.forwardSeconds, rows, t1);
    const kept = labelPrivate ? { last: cap.data[cap.data.length - 1]!, targets, mask } : undefined;
    // The layers are in the payload now: their buffers go back (label-private keeps the last one for the loss, and gives it back after).
    cap.data.slice(0, labelPrivate ? -1 : undefined).forEach((x) => this.pool.give(x));
    return { payload, rows, lengths, sequences: inputs.length, kept };
  }

  /**
   * Label-private: the loss of a batch on the device, from the server's side
   * output at the join (delta, quantized) and the kept hidden states; for a
   * training `step`, also the gradient at the join, quantized for the wire
   * (over the step's candidate rows where CandidateRows says so).
   */
  private async lossAtJoin(kept: NonNullable<EncodedBatch['kept']>, rows: number, deltaPayload: Buffer, step?: { index: number; sequenceIds: number[]; lengths: number[] }): Promise<{ lossSum: number; tokens: number; grad?: Buffer }> {
    const d = this.backbone.info.hiddenSize;
    const bits = joinBits(this.bits);
    if (deltaPayload.length !== rows * bytesPerRow(d, bits)) throw new MobiError('SERVER_ERROR', 'The server sent a side output of the wrong size.');
    const t0 = process.hrtime.bigint();
    const y = dequantizeRows(deltaPayload, rows, d, bits, 0, this.pool.takeFloats(rows * d));
    for (let i = 0; i < y.length; i++) y[i]! += kept.last[i]!;
    // Rows not trained on (retrieved context) have no loss and no gradient: the head runs over the trained rows only
    // (over every row, weighted 0, in a batch with none: the head update's gradient is then zero, not the last batch's).
    const t = trainedRows(kept.mask, step?.lengths ?? [rows]);
    const tokens = t.rows.length;
    const sub = tokens > 0 && tokens < rows ? t : undefined;
    let yIn = y;
    let targets = kept.targets;
    let weights: Float32Array;
    if (sub) {
      yIn = new Float32Array(tokens * d);
      sub.rows.forEach((row, k) => yIn.set(y.subarray(row * d, (row + 1) * d), k * d));
      targets = Int32Array.from(sub.rows, (row) => kept.targets[row]!);
      weights = new Float32Array(tokens).fill(1 / tokens);
    } else weights = Float32Array.from(kept.mask, (m) => (tokens > 0 ? m / tokens : 0));
    let r: { losses: Float32Array; grad?: Float32Array };
    if (step) {
      const request = this.candidates?.request(step.index, step.sequenceIds, sub ? sub.lengths : step.lengths, targets);
      const run = await this.head!.lossAndGradient(yIn, targets, weights, request);
      if (request) this.candidates!.taken(step.index, step.sequenceIds, request, run);
      r = run;
    } else r = { losses: await this.head!.losses(yIn, targets) };
    let lossSum = 0;
    for (let k = 0; k < r.losses.length; k++) if (sub || kept.mask[k]) lossSum += r.losses[k]!;
    let grad: Buffer | undefined;
    if (r.grad) {
      let full = r.grad;
      if (sub) {
        full = new Float32Array(rows * d); // a row not trained on has no gradient
        sub.rows.forEach((row, k) => full.set(r.grad!.subarray(k * d, (k + 1) * d), row * d));
      }
      grad = this.pool.take(rows * bytesPerRow(d, bits));
      quantizeRows(full, rows, d, bits, grad, 0);
    }
    this.pool.give(y);
    this.timings.headSeconds += Number(process.hrtime.bigint() - t0) / 1e9;
    return { lossSum, tokens, grad };
  }

  /** Held-out mean loss with the server's current side network, on the plain held-out sequences or their fill-in-the-middle form. */
  async evaluate(conn: ServerConnection, jobId: string, label: 'before' | 'after', form: 'plain' | 'fim' = 'plain'): Promise<number> {
    this.ctx.setPhase('evaluating');
    const evalId = `${label}${form === 'fim' ? '-fim' : ''}-${Date.now()}`;
    const B = this.config.batchSize;
    const sequences = form === 'fim' ? this.data.heldOutFim : this.data.heldOut;
    const pending: Promise<{ lossSum: number; tokens: number }>[] = [];
    for (let i = 0; i * B < sequences.length; i++) {
      this.ctx.checkCancelled();
      // Held-out batches take credits as training batches do: at most `credits` unanswered.
      if (i >= conn.welcome.credits) await pending[i - conn.welcome.credits];
      const { payload, rows, lengths, kept } = await this.batchOf(splitInputsTargets(sequences.slice(i * B, (i + 1) * B)), 'eval');
      if (kept) {
        // Label-private: the server sends the side output; the loss is computed here.
        const side = conn.expect('eval/side', (m) => m.evalId === evalId && m.index === i, jobId);
        pending.push(side.then((r) => this.lossAtJoin(kept, rows, r.payload)).finally(() => this.pool.give(kept.last)));
      } else {
        pending.push(conn.expect('eval/result', (m) => m.evalId === evalId && m.index === i, jobId).then((r) => r.message));
      }
      pending[pending.length - 1]!.catch(() => undefined);
      conn.send({ type: 'batch/eval', jobId, evalId, index: i, rows, lengths }, payload, () => this.pool.give(payload));
    }
    let lossSum = 0;
    let tokens = 0;
    for (const r of await Promise.all(pending)) {
      lossSum += r.lossSum;
      tokens += r.tokens;
    }
    const loss = lossSum / tokens;
    this.ctx.log(`held-out ${form} loss ${label}: ${loss.toFixed(4)} over ${tokens} tokens`);
    return loss;
  }

  /**
   * Streams training batches `startIndex` .. totalSteps-1 and waits for every
   * acknowledgement. `onSent` and `onAck` report each batch sent and each
   * step the server applied.
   */
  async train(
    conn: ServerConnection,
    jobId: string,
    startIndex: number,
    onSent: (sequences: number, rows: number) => void,
    onAck: (ack: ServerMessage<'batch/ack'>) => void,
    onWaiting: (ahead: number) => void = () => undefined,
  ): Promise<void> {
    this.ctx.setPhase('training');
    const total = this.config.totalSteps;
    const window = new CreditWindow(conn, jobId, conn.welcome.credits, (ack) => {
      this.timings.serverSeconds += ack.seconds;
      this.headUpdate?.onAck(ack);
      onAck(ack);
    }, onWaiting);
    const started = process.hrtime.bigint();
    try {
      const forward = (i: number): Promise<EncodedBatch> => this.trainBatch(i);
      let next = startIndex;
      /** Label-private: the device's half of each step, one batch after another. */
      let joins: Promise<void> = Promise.resolve();
      let pending = next < total ? forward(next) : undefined;
      while (next < total) {
        this.ctx.checkCancelled();
        if (this.stopAt !== undefined && Date.now() > this.stopAt) {
          this.ctx.log(`time budget spent after ${next} of ${total} batches`);
          break;
        }
        const { payload, rows, lengths, sequences, kept, sequenceIds } = await pending!;
        // Start the backbone on the next batch now: it runs on a worker thread
        // while this batch waits for credit and the server trains.
        pending = next + 1 < total ? forward(next + 1) : undefined;
        pending?.catch(() => undefined);
        await window.acquire();
        const s0 = process.hrtime.bigint();
        const index = next;
        if (kept) {
          // Label-private: the server answers with the side output; the loss and its gradient are computed here and sent back.
          const side = conn.expect('batch/side', (m) => m.index === index, jobId);
          // A drop rejects it at once, maybe before the chain below reaches it: the chain reports it, not the process.
          side.catch(() => undefined);
          joins = joins
            .then(() => side)
            .then(async (r) => {
              await this.headUpdate?.ready(); // the previous batch's step of the head update
              const { lossSum, tokens, grad } = await this.lossAtJoin(kept, rows, r.payload, { index, sequenceIds: sequenceIds!, lengths });
              this.headUpdate?.gradientTaken(index);
              this.pool.give(kept.last);
              conn.send({ type: 'batch/grad', jobId, index, rows, lossSum, tokens }, grad!, () => this.pool.give(grad));
            });
          joins.catch((err: unknown) => window.fail(MobiError.from(err)));
        }
        conn.send({ type: 'batch/train', jobId, index: next, rows, lengths }, payload, () => this.pool.give(payload));
        this.timings.sendSeconds += Number(process.hrtime.bigint() - s0) / 1e9;
        window.sent(next);
        onSent(sequences, rows);
        next++;
      }
      await window.drain();
    } finally {
      window.dispose();
      this.timings.trainWallSeconds += Number(process.hrtime.bigint() - started) / 1e9;
    }
  }
}

/** The rows of a batch that are trained on (mask 1), ascending, and how many of them each sequence of `lengths` rows has. */
function trainedRows(mask: Uint8Array, lengths: readonly number[]): { rows: Int32Array; lengths: number[] } {
  let count = 0;
  for (const m of mask) count += m;
  const rows = new Int32Array(count);
  const counts: number[] = [];
  let at = 0;
  let row = 0;
  for (const length of lengths) {
    const from = at;
    for (const end = row + length; row < end; row++) if (mask[row]) rows[at++] = row;
    counts.push(at - from);
  }
  return { rows, lengths: counts };
}
