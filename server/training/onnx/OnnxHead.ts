import { ort } from './ort';
import { decodeHalf } from '../../../common/float16';

/** Rows of the head per chunk: bounds the [tokens, chunk] logits (64 MiB at 1,024 tokens). */
export const HEAD_CHUNK_ROWS = 16_384;

/**
 * A model's frozen final norm and head, resident once per fingerprint. The
 * head stays in float16, as the device uploaded it (2 bytes per weight: 272
 * MiB for Qwen2.5-0.5B's 151,936 x 896), split into chunks of
 * HEAD_CHUNK_ROWS rows that the head-chunk graph casts to float32 one at a
 * time; the target rows the loss needs are decoded here.
 */
export class OnnxHead {
  readonly vocab: number;
  readonly chunks: ort.Tensor[]; // float16 [c, d] each
  /** The first vocabulary row of each chunk. */
  readonly starts: number[];
  readonly norm: ort.Tensor; // float32 [d]
  /** A LayerNorm's bias (starcoder2), float32 [d]; absent for an RMSNorm. */
  readonly normBias?: ort.Tensor;
  readonly epsTensor: ort.Tensor; // float32 []

  /** halves: [vocab][d] float16 bits; normWeight: [d]; normBias: [d] for a LayerNorm. */
  constructor(private readonly halves: Uint16Array, normWeight: Float32Array, readonly eps: number, chunkRows = HEAD_CHUNK_ROWS, normBias?: Float32Array) {
    const d = normWeight.length;
    this.vocab = halves.length / d;
    this.norm = new ort.Tensor('float32', normWeight, [d]);
    if (normBias) this.normBias = new ort.Tensor('float32', normBias, [d]);
    this.epsTensor = new ort.Tensor('float32', Float32Array.of(eps), []);
    this.chunks = [];
    this.starts = [];
    for (let start = 0; start < this.vocab; start += chunkRows) {
      this.starts.push(start);
      const rows = Math.min(chunkRows, this.vocab - start);
      this.chunks.push(new ort.Tensor('float16', halves.subarray(start * d, (start + rows) * d), [rows, d]));
    }
  }

  get d(): number {
    return this.norm.dims[0]!;
  }

  /** The head rows of `targets`, as float32: [n, d]. */
  targetRows(targets: Int32Array): Float32Array {
    const d = this.d;
    const rows = new Uint16Array(targets.length * d);
    for (let i = 0; i < targets.length; i++) rows.set(this.halves.subarray(targets[i]! * d, (targets[i]! + 1) * d), i * d);
    return decodeHalf(rows);
  }
}
