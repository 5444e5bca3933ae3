import type { Bits } from '../../../common/ActivationQuantizer';
import { encodeBatchPayload } from '../../../common/batchPayload';
import type { JobConfig, ServerMessage } from '../../../common/messages';
import type { Backbone } from '../Backbone';
import { Dataset, splitInputsTargets, trainBatchSequences } from '../dataset';
import type { ServerConnection } from '../ServerConnection';
import { CreditWindow } from './CreditWindow';
import type { JobContext } from './JobContext';

/** Where the device's time goes, in seconds (summed over the job). */
export interface StreamTimings {
  /** Backbone forwards of training batches. */
  deviceForwardSeconds: number;
  /** Backbone forwards of held-out batches. */
  evalForwardSeconds: number;
  quantizeSeconds: number;
  sendSeconds: number;
  serverSeconds: number;
  trainWallSeconds: number;
}

/** One batch ready for the wire. */
interface EncodedBatch {
  payload: Buffer;
  /** Predicted tokens in the batch. */
  rows: number;
  sequences: number;
}

/**
 * The data path of a job: the backbone's forward over a batch with capture,
 * quantized into a batch payload, streamed to the server. Training batches
 * flow under the server's credits, with the backbone already running the next
 * batch while the server trains on this one; held-out batches are evaluated,
 * not trained.
 */
export class ActivationStream {
  readonly timings: StreamTimings = { deviceForwardSeconds: 0, evalForwardSeconds: 0, quantizeSeconds: 0, sendSeconds: 0, serverSeconds: 0, trainWallSeconds: 0 };

  constructor(
    private readonly backbone: Backbone,
    private readonly data: Dataset,
    private readonly config: JobConfig,
    private readonly ctx: JobContext,
  ) {}

  /** Runs the backbone over `seqs` with capture and encodes the batch payload. */
  private async encodeBatch(seqs: Int32Array[], use: 'train' | 'eval'): Promise<EncodedBatch> {
    const { inputs, targets, mask, rows } = splitInputsTargets(seqs);
    const cap = await this.backbone.capture(inputs, this.config.tappedLayers);
    const t1 = process.hrtime.bigint();
    const payload = encodeBatchPayload({ rows, layers: cap.data, targets, mask }, cap.hiddenSize, this.config.bits as Bits);
    if (use === 'train') this.timings.deviceForwardSeconds += cap.forwardSeconds;
    else this.timings.evalForwardSeconds += cap.forwardSeconds;
    this.timings.quantizeSeconds += Number(process.hrtime.bigint() - t1) / 1e9;
    return { payload, rows, sequences: seqs.length };
  }

  /** Held-out mean loss with the server's current side network, on the plain held-out sequences or their fill-in-the-middle form. */
  async evaluate(conn: ServerConnection, jobId: string, label: 'before' | 'after', form: 'plain' | 'fim' = 'plain'): Promise<number> {
    this.ctx.setPhase('evaluating');
    const evalId = `${label}${form === 'fim' ? '-fim' : ''}-${Date.now()}`;
    const B = this.config.batchSize;
    const sequences = form === 'fim' ? this.data.heldOutFim : this.data.heldOut;
    const pending: Promise<{ message: ServerMessage<'eval/result'> }>[] = [];
    for (let i = 0; i * B < sequences.length; i++) {
      this.ctx.checkCancelled();
      const { payload, rows } = await this.encodeBatch(sequences.slice(i * B, (i + 1) * B), 'eval');
      pending.push(conn.expect('eval/result', (m) => m.evalId === evalId && m.index === i, jobId));
      conn.send({ type: 'batch/eval', jobId, evalId, index: i, rows }, payload);
    }
    let lossSum = 0;
    let tokens = 0;
    for (const r of await Promise.all(pending)) {
      lossSum += r.message.lossSum;
      tokens += r.message.tokens;
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
  ): Promise<void> {
    this.ctx.setPhase('training');
    const total = this.config.totalSteps;
    const window = new CreditWindow(conn, jobId, conn.welcome.credits, (ack) => {
      this.timings.serverSeconds += ack.seconds;
      onAck(ack);
    });
    const started = process.hrtime.bigint();
    try {
      const forward = (i: number): Promise<EncodedBatch> => this.encodeBatch(trainBatchSequences(this.data, this.config.batchSize, i), 'train');
      let next = startIndex;
      let pending = next < total ? forward(next) : undefined;
      while (next < total) {
        this.ctx.checkCancelled();
        const { payload, rows, sequences } = await pending!;
        // Start the backbone on the next batch now: it runs on a worker thread
        // while this batch waits for credit and the server trains.
        pending = next + 1 < total ? forward(next + 1) : undefined;
        pending?.catch(() => undefined);
        await window.acquire();
        const s0 = process.hrtime.bigint();
        conn.send({ type: 'batch/train', jobId, index: next, rows }, payload);
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
