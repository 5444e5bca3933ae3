import { toHalf } from '../../../../common/float16';
import { MobiError } from '../../MobiError';

/** ggml tensor types this project writes (ids from ggml.h). */
export const GgmlType = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;
export type GgmlTypeName = 'f32' | 'f16' | 'q4_0' | 'q8_0';
export const GGML_TYPE_BY_NAME: Record<GgmlTypeName, number> = {
  f32: GgmlType.F32,
  f16: GgmlType.F16,
  q4_0: GgmlType.Q4_0,
  q8_0: GgmlType.Q8_0,
};

/** Elements per quantization block. */
export const QK = 32;

/** Bytes of one row of `n` elements stored as `type`. */
export function rowBytes(type: number, n: number): number {
  switch (type) {
    case GgmlType.F32:
      return 4 * n;
    case GgmlType.F16:
      return 2 * n;
    case GgmlType.Q8_0:
      return (n / QK) * 34; // f16 scale + 32 int8
    case GgmlType.Q4_0:
      return (n / QK) * 18; // f16 scale + 16 bytes of nibbles
    default:
      throw new MobiError('UNSUPPORTED_TYPE', `unsupported ggml type ${type}`);
  }
}

/**
 * Encodes `values` (a whole number of rows) as `type`, following ggml's
 * reference quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref).
 */
export function encodeTensor(type: number, values: Float32Array): Buffer {
  const n = values.length;
  const out = Buffer.alloc(rowBytes(type, n));
  switch (type) {
    case GgmlType.F32:
      Buffer.from(values.buffer, values.byteOffset, values.byteLength).copy(out);
      return out;
    case GgmlType.F16:
      for (let i = 0; i < n; i++) out.writeUInt16LE(toHalf(values[i]!), 2 * i);
      return out;
    case GgmlType.Q8_0:
      for (let b = 0; b < n / QK; b++) {
        let amax = 0;
        for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(values[b * QK + j]!));
        const d = amax / 127;
        const id = d !== 0 ? 1 / d : 0;
        const base = b * 34;
        out.writeUInt16LE(toHalf(d), base);
        for (let j = 0; j < QK; j++) out.writeInt8(Math.round(values[b * QK + j]! * id), base + 2 + j);
      }
      return out;
    case GgmlType.Q4_0:
      for (let b = 0; b < n / QK; b++) {
        let amax = 0;
        let max = 0;
        for (let j = 0; j < QK; j++) {
          const v = values[b * QK + j]!;
          if (Math.abs(v) > amax) {
            amax = Math.abs(v);
            max = v;
          }
        }
        const d = max / -8;
        const id = d !== 0 ? 1 / d : 0;
        const base = b * 18;
        out.writeUInt16LE(toHalf(d), base);
        for (let j = 0; j < QK / 2; j++) {
          const lo = Math.min(15, Math.trunc(values[b * QK + j]! * id + 8.5));
          const hi = Math.min(15, Math.trunc(values[b * QK + j + QK / 2]! * id + 8.5));
          out[base + 2 + j] = lo | (hi << 4);
        }
      }
      return out;
    default:
      throw new MobiError('UNSUPPORTED_TYPE', `unsupported ggml type ${type}`);
  }
}

/** llama.cpp's `general.file_type` for a model whose matrices are `type`. */
export function fileTypeOf(type: number): number {
  switch (type) {
    case GgmlType.F32:
      return 0;
    case GgmlType.F16:
      return 1;
    case GgmlType.Q4_0:
      return 2;
    case GgmlType.Q8_0:
      return 7;
    default:
      throw new MobiError('UNSUPPORTED_TYPE', `unsupported ggml type ${type}`);
  }
}
