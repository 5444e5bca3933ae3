import { fromHalf, toHalf } from './float16';
import { JOB_SETTINGS } from './jobSettings';

/**
 * Low-bit activation transfer (the device quantizes, the server dequantizes).
 * Row = one token's hidden state of one layer, [d] floats.
 *   8: int8, one f32 scale per row:            4 + d bytes
 *   4: int4, one f16 scale per 32-value group:  2*ceil(d/32) + ceil(d/2) bytes
 *  16: f16:                                     2*d bytes
 * Block layout: all scales first, then all values (row-major).
 */
export type Bits = (typeof JOB_SETTINGS.bits.values)[number];
export const INT4_GROUP = 32;

/**
 * Bits of a label-private job's tensors at the join (the server's side output
 * and the device's gradient there): the job's bits, but never fewer than 8.
 * They are one row per token (1/L of the layers' traffic); at 4 bits the
 * gradient lost too much and training drifted up (side network 2 on the
 * quality benchmark's stand-in: training loss 6.73 -> 7.05 over an epoch,
 * held-out 7.031 -> 7.098; docs/benchmarks.md).
 */
export function joinBits(bits: Bits): Bits {
  return bits === 4 ? 8 : bits;
}

/**
 * How one row sits in a quantized block of many (quantizeRows): every row's
 * scale bytes first, then every row's value bytes, each part row-major. A
 * block of some rows is cut out of a larger one, or put together from
 * smaller ones, by these two widths.
 */
export function rowLayout(d: number, bits: Bits): { scaleBytes: number; valueBytes: number } {
  switch (bits) {
    case 8:
      return { scaleBytes: 4, valueBytes: d };
    case 4:
      return { scaleBytes: 2 * Math.ceil(d / INT4_GROUP), valueBytes: Math.ceil(d / 2) };
    case 16:
      return { scaleBytes: 0, valueBytes: 2 * d };
  }
}

/** Exact bytes on the wire for one token of one layer. */
export function bytesPerRow(d: number, bits: Bits): number {
  const { scaleBytes, valueBytes } = rowLayout(d, bits);
  return scaleBytes + valueBytes;
}

/** Quantizes [rows][d] floats into `out` at `offset`; returns bytes written. */
export function quantizeRows(src: Float32Array, rows: number, d: number, bits: Bits, out: Buffer, offset = 0): number {
  if (bits === 16) {
    for (let i = 0; i < rows * d; i++) out.writeUInt16LE(toHalf(src[i]!), offset + 2 * i);
    return rows * d * 2;
  }
  if (bits === 8) {
    const values = offset + 4 * rows;
    for (let r = 0; r < rows; r++) {
      let amax = 0;
      const base = r * d;
      for (let i = 0; i < d; i++) amax = Math.max(amax, Math.abs(src[base + i]!));
      const scale = amax / 127;
      out.writeFloatLE(scale, offset + 4 * r);
      const inv = scale > 0 ? 1 / scale : 0;
      for (let i = 0; i < d; i++) out[values + base + i] = Math.round(src[base + i]! * inv) & 0xff;
    }
    return rows * (4 + d);
  }
  const groups = Math.ceil(d / INT4_GROUP);
  const packedRow = Math.ceil(d / 2);
  const values = offset + 2 * rows * groups;
  out.fill(0, values, values + rows * packedRow);
  for (let r = 0; r < rows; r++) {
    const base = r * d;
    for (let g = 0; g < groups; g++) {
      const lo = g * INT4_GROUP;
      const hi = Math.min(d, lo + INT4_GROUP);
      let amax = 0;
      for (let i = lo; i < hi; i++) amax = Math.max(amax, Math.abs(src[base + i]!));
      const half = toHalf(Math.min(amax / 7, 65504));
      out.writeUInt16LE(half, offset + 2 * (r * groups + g));
      const scale = fromHalf(half); // quantize against the scale the receiver will see
      const inv = scale > 0 ? 1 / scale : 0;
      for (let i = lo; i < hi; i++) {
        const q = Math.max(-8, Math.min(7, Math.round(src[base + i]! * inv))) + 8;
        const at = values + r * packedRow + (i >> 1);
        out[at] = out[at]! | (i & 1 ? q << 4 : q);
      }
    }
  }
  return rows * (2 * groups + packedRow);
}

/** Inverse of quantizeRows: reads [rows][d] from `buf` at `offset`. */
export function dequantizeRows(buf: Uint8Array, rows: number, d: number, bits: Bits, offset = 0, out = new Float32Array(rows * d)): Float32Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (bits === 16) {
    for (let i = 0; i < rows * d; i++) out[i] = fromHalf(view.getUint16(offset + 2 * i, true));
    return out;
  }
  if (bits === 8) {
    const values = offset + 4 * rows;
    for (let r = 0; r < rows; r++) {
      const scale = view.getFloat32(offset + 4 * r, true);
      const base = r * d;
      for (let i = 0; i < d; i++) out[base + i] = view.getInt8(values + base + i) * scale;
    }
    return out;
  }
  const groups = Math.ceil(d / INT4_GROUP);
  const packedRow = Math.ceil(d / 2);
  const values = offset + 2 * rows * groups;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const scale = fromHalf(view.getUint16(offset + 2 * (r * groups + g), true));
      const hi = Math.min(d, (g + 1) * INT4_GROUP);
      for (let i = g * INT4_GROUP; i < hi; i++) {
        const byte = buf[values + r * packedRow + (i >> 1)]!;
        out[r * d + i] = (((i & 1 ? byte >> 4 : byte) & 0x0f) - 8) * scale;
      }
    }
  }
  return out;
}
