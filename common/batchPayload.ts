import { Bits, bytesPerRow, dequantizeRows, quantizeRows } from './ActivationQuantizer';
import { WireError } from './WireError';
import { runSteps, runStepsSliced } from './sliced';

/**
 * Payload of `batch/train` and `batch/eval`: for `rows` tokens,
 *   each tapped layer in order: a quantized block [rows][d] (ActivationQuantizer)
 *   targets: int32 [rows]  (next-token ids)          } not in label-private
 *   mask:    uint8 [rows]  (1 = this token's loss counts) } jobs
 */
export interface ActivationBatch {
  rows: number;
  /** Per tapped layer: [rows][d] float32. */
  layers: Float32Array[];
  targets: Int32Array;
  mask: Uint8Array;
  /** The batch's sequences (summing to rows), in order: a version-2 side network attends within each. */
  lengths?: number[];
}

export function batchPayloadBytes(rows: number, nLayers: number, d: number, bits: Bits, labels = true): number {
  return nLayers * rows * bytesPerRow(d, bits) + (labels ? rows * 5 : 0);
}

/** A batch payload's bytes: each layer quantized (a pause after each), then, with `labels`, targets and mask. */
function* payloadSteps(layers: Float32Array[], rows: number, d: number, bits: Bits, labels?: { targets: Int32Array; mask: Uint8Array }, take: (bytes: number) => Buffer = Buffer.allocUnsafe): Generator<void, Buffer> {
  const out = take(batchPayloadBytes(rows, layers.length, d, bits, labels !== undefined));
  let at = 0;
  for (const layer of layers) {
    at += quantizeRows(layer, rows, d, bits, out, at);
    yield;
  }
  if (labels) labelsPayload(labels.targets, labels.mask).copy(out, at);
  return out;
}

/** A label-private payload: the tapped layers only. */
export function encodeLayersPayload(layers: Float32Array[], rows: number, d: number, bits: Bits): Buffer {
  return runSteps(payloadSteps(layers, rows, d, bits));
}

/** Decodes a label-private payload (layers only), checking its size. */
export function decodeLayersPayload(payload: Buffer, rows: number, nLayers: number, d: number, bits: Bits): Float32Array[] {
  const expected = batchPayloadBytes(rows, nLayers, d, bits, false);
  if (rows === 0 || payload.length !== expected) {
    throw new WireError('BAD_FRAME', `batch payload has ${payload.length} bytes, expected ${expected} for ${rows} rows`);
  }
  const perLayer = rows * bytesPerRow(d, bits);
  return Array.from({ length: nLayers }, (_, l) => dequantizeRows(payload, rows, d, bits, l * perLayer));
}

/**
 * The same bytes as encodeBatchPayload (or, without targets, encodeLayersPayload),
 * one layer at a time with the event loop free between layers: what the
 * device's forward loop uses, so a 24-layer batch never holds its thread.
 * `take`: where the payload's bytes come from (a job's BufferPool).
 */
export function encodePayloadSliced(layers: Float32Array[], rows: number, d: number, bits: Bits, labels?: { targets: Int32Array; mask: Uint8Array }, take?: (bytes: number) => Buffer): Promise<Buffer> {
  return runStepsSliced(payloadSteps(layers, rows, d, bits, labels, take));
}

export function encodeBatchPayload(batch: ActivationBatch, d: number, bits: Bits): Buffer {
  return runSteps(payloadSteps(batch.layers, batch.rows, d, bits, batch));
}

/** The part of a batch payload after its layers: int32 targets [rows], then uint8 mask [rows]. */
export function labelsPayload(targets: Int32Array, mask: Uint8Array): Buffer {
  const rows = targets.length;
  const out = Buffer.allocUnsafe(rows * 5);
  Buffer.from(targets.buffer, targets.byteOffset, rows * 4).copy(out, 0);
  Buffer.from(mask.buffer, mask.byteOffset, rows).copy(out, rows * 4);
  return out;
}

/** Decodes a batch payload, checking its size and target ids exactly. */
export function decodeBatchPayload(payload: Buffer, rows: number, nLayers: number, d: number, bits: Bits, vocabularySize: number): ActivationBatch {
  const expected = batchPayloadBytes(rows, nLayers, d, bits);
  if (rows === 0 || payload.length !== expected) {
    throw new WireError('BAD_FRAME', `batch payload has ${payload.length} bytes, expected ${expected} for ${rows} rows`);
  }
  const layers: Float32Array[] = [];
  const perLayer = rows * bytesPerRow(d, bits);
  for (let l = 0; l < nLayers; l++) layers.push(dequantizeRows(payload, rows, d, bits, l * perLayer));
  const tStart = nLayers * perLayer;
  const targets = new Int32Array(rows);
  for (let i = 0; i < rows; i++) {
    const t = payload.readInt32LE(tStart + 4 * i);
    if (t < 0 || t >= vocabularySize) throw new WireError('BAD_FRAME', 'a target token id is outside the vocabulary');
    targets[i] = t;
  }
  const mask = new Uint8Array(rows);
  for (let i = 0; i < rows; i++) {
    const m = payload[tStart + 4 * rows + i]!;
    if (m > 1) throw new WireError('BAD_FRAME', 'mask values must be 0 or 1');
    mask[i] = m;
  }
  return { rows, layers, targets, mask };
}
