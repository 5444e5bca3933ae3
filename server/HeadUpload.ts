import { createHash, Hash } from 'node:crypto';
import type { DeviceMessage, ModelSpec } from '../common/messages';
import { WireError } from '../common/WireError';
import { normValuesOf } from './storage/records';

/** Largest head the server accepts (rows x cols): 600 M values, 1.2 GB as f16 (a 7B model's 152k x 3.6k head fits). */
export const MAX_HEAD_VALUES = 600_000_000;

/**
 * One device's head upload (`head/begin`, `head/chunk`..., `head/end`): every
 * row must arrive exactly once, and the content must match the digest the
 * session stated in its hello (computed by the device from its model file),
 * so a head that is not the model's own is refused before anyone trains on it.
 */
export class HeadUpload {
  readonly norm: Float32Array; // [cols], or [2 cols] with a LayerNorm's bias
  readonly halves: Uint16Array; // [rows][cols]
  private readonly received: Uint8Array; // [rows] 1 = arrived
  private rowsReceived = 0;

  private constructor(private readonly model: ModelSpec, readonly rows: number, readonly cols: number, norm: Float32Array) {
    this.norm = norm;
    try {
      this.halves = new Uint16Array(rows * cols);
      this.received = new Uint8Array(rows);
    } catch {
      throw new WireError('LIMIT', 'the server has no memory for a head this large now');
    }
  }

  static begin(model: ModelSpec, m: DeviceMessage<'head/begin'>, payload: Buffer): HeadUpload {
    if (m.rows !== model.vocabularySize || m.cols !== model.hiddenSize) throw new WireError('MODEL_MISMATCH', 'head shape does not match the model');
    if (m.rows * m.cols > MAX_HEAD_VALUES) throw new WireError('LIMIT', `heads of more than ${MAX_HEAD_VALUES} values are not accepted by this server`);
    const normValues = normValuesOf(model, m.cols);
    if (payload.length !== 4 * normValues) throw new WireError('BAD_FRAME', `head/begin payload must be the f32 norm weight${normValues > m.cols ? ' and bias' : ''}`);
    const norm = new Float32Array(normValues);
    Buffer.from(norm.buffer).set(payload);
    return new HeadUpload(model, m.rows, m.cols, norm);
  }

  chunk(m: DeviceMessage<'head/chunk'>, payload: Buffer): void {
    if (m.rowCount === 0 || m.rowStart + m.rowCount > this.rows || payload.length !== 2 * m.rowCount * this.cols) {
      throw new WireError('BAD_FRAME', 'head/chunk rows out of range or payload size wrong');
    }
    for (let r = m.rowStart; r < m.rowStart + m.rowCount; r++) {
      if (this.received[r]) throw new WireError('BAD_FRAME', `head row ${r} was sent twice; the upload is void, start it again`);
    }
    this.received.fill(1, m.rowStart, m.rowStart + m.rowCount);
    this.rowsReceived += m.rowCount;
    new Uint8Array(this.halves.buffer, 2 * m.rowStart * this.cols, payload.length).set(payload);
  }

  /** Every row arrived and the content matches the session's head digest; otherwise BAD_FRAME. */
  verify(): void {
    if (this.rowsReceived !== this.rows) throw new WireError('BAD_FRAME', `head has ${this.rowsReceived} of ${this.rows} rows`);
    const digest = headDigestOf(this.norm, this.halves);
    if (digest !== this.model.headDigest) throw new WireError('BAD_FRAME', 'the uploaded head does not match the digest stated in session/hello; it was not stored');
  }
}

/** sha256 of a head upload's content: the f32 norm weight, then the f16 rows in order (what the device hashes too). */
export function headDigestOf(norm: Float32Array, halves: Uint16Array, hash: Hash = createHash('sha256')): string {
  hash.update(new Uint8Array(norm.buffer, norm.byteOffset, norm.byteLength));
  hash.update(new Uint8Array(halves.buffer, halves.byteOffset, halves.byteLength));
  return hash.digest('hex');
}
