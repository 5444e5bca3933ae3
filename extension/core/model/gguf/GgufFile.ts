import * as fs from 'node:fs';
import { runSteps, runStepsSliced } from '../../../../common/sliced';
import { MobiError } from '../../MobiError';
import { rowBytes } from './ggmlTypes';

/** GGUF metadata value types (gguf.h). */
export const GgufValueType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6,
  BOOL: 7, STRING: 8, ARRAY: 9, UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;

export type GgufScalar = number | bigint | boolean | string;
/** One metadata entry, typed as stored so it can be written back unchanged. */
export interface GgufKv {
  type: number;
  value: GgufScalar | GgufScalar[];
  /** Element type when `type` is ARRAY. */
  arrayType?: number;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml order: shape[0] is the innermost (row length). */
  shape: number[];
  type: number;
  /** Byte offset relative to the data section. */
  offset: number;
}

export interface GgufFile {
  path: string;
  version: number;
  kv: Map<string, GgufKv>;
  tensors: GgufTensorInfo[];
  dataOffset: number;
  fileSize: number;
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Refuse headers that claim absurd counts (a corrupt file, not a model). */
const MAX_HEADER_ITEMS = 10_000_000;
const READ_CHUNK_BYTES = 4 * 1024 * 1024;

class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;
  constructor(private readonly fd: number, private readonly fileSize: number) {}

  private ensure(n: number): void {
    const end = this.pos + n;
    if (end <= this.bufStart + this.buf.length) return;
    if (end > this.fileSize) throw new MobiError('TRUNCATED_GGUF', 'The GGUF header is cut short: the file is truncated or damaged. Download or generate it again.');
    const start = this.pos;
    const len = Math.min(this.fileSize - start, Math.max(n, READ_CHUNK_BYTES));
    const next = Buffer.alloc(len);
    fs.readSync(this.fd, next, 0, len, start);
    this.buf = next;
    this.bufStart = start;
  }
  private take(n: number): number {
    this.ensure(n);
    const at = this.pos - this.bufStart;
    this.pos += n;
    return at;
  }
  u8(): number { const at = this.take(1); return this.buf.readUInt8(at); }
  i8(): number { const at = this.take(1); return this.buf.readInt8(at); }
  u16(): number { const at = this.take(2); return this.buf.readUInt16LE(at); }
  i16(): number { const at = this.take(2); return this.buf.readInt16LE(at); }
  u32(): number { const at = this.take(4); return this.buf.readUInt32LE(at); }
  i32(): number { const at = this.take(4); return this.buf.readInt32LE(at); }
  f32(): number { const at = this.take(4); return this.buf.readFloatLE(at); }
  f64(): number { const at = this.take(8); return this.buf.readDoubleLE(at); }
  u64(): bigint { const at = this.take(8); return this.buf.readBigUInt64LE(at); }
  i64(): bigint { const at = this.take(8); return this.buf.readBigInt64LE(at); }
  count(): number {
    const v = this.u64();
    if (v > BigInt(MAX_HEADER_ITEMS)) throw new MobiError('NOT_GGUF', 'The GGUF header is damaged (impossible count).');
    return Number(v);
  }
  str(): string {
    const len = this.count();
    const at = this.take(len);
    return this.buf.toString('utf8', at, at + len);
  }
}

function readScalar(c: Cursor, type: number): GgufScalar {
  switch (type) {
    case GgufValueType.UINT8: return c.u8();
    case GgufValueType.INT8: return c.i8();
    case GgufValueType.UINT16: return c.u16();
    case GgufValueType.INT16: return c.i16();
    case GgufValueType.UINT32: return c.u32();
    case GgufValueType.INT32: return c.i32();
    case GgufValueType.FLOAT32: return c.f32();
    case GgufValueType.BOOL: return c.u8() !== 0;
    case GgufValueType.STRING: return c.str();
    case GgufValueType.UINT64: return c.u64();
    case GgufValueType.INT64: return c.i64();
    case GgufValueType.FLOAT64: return c.f64();
    default: throw new MobiError('NOT_GGUF', `The GGUF header is damaged (unknown value type ${type}).`);
  }
}

/** Array values read between two pauses of readGgufFileAsync (a vocabulary of 151,936 strings takes about ten). */
const VALUES_PER_PAUSE = 16_384;

/**
 * Reads and validates a GGUF file's header (metadata and tensor table) without
 * reading tensor data. Throws MobiError NOT_GGUF / TRUNCATED_GGUF /
 * MODEL_NOT_FOUND with a message a person can act on.
 */
export function readGgufFile(path: string): GgufFile {
  return runSteps(ggufSteps(path));
}

/** readGgufFile with the event loop free every VALUES_PER_PAUSE array values (a large vocabulary takes a while): what a host's thread uses. */
export function readGgufFileAsync(path: string): Promise<GgufFile> {
  return runStepsSliced(ggufSteps(path));
}

/** The header's reading, pausing (yield) every VALUES_PER_PAUSE array values. */
function* ggufSteps(path: string): Generator<void, GgufFile> {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw new MobiError('MODEL_NOT_FOUND', `Cannot open the model file ${path}: check the path in settings.`, { cause: err });
  }
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 4) throw new MobiError('NOT_GGUF', `${path} is not a GGUF model file (too small).`);
    const c = new Cursor(fd, fileSize);
    if (c.u32() !== GGUF_MAGIC) throw new MobiError('NOT_GGUF', `${path} is not a GGUF model file (bad magic).`);
    const version = c.u32();
    if (version !== 2 && version !== 3) throw new MobiError('NOT_GGUF', `${path} has GGUF version ${version}; versions 2 and 3 are supported.`);
    const nTensors = c.count();
    const nKv = c.count();
    const kv = new Map<string, GgufKv>();
    for (let i = 0; i < nKv; i++) {
      const key = c.str();
      const type = c.u32();
      if (type === GgufValueType.ARRAY) {
        const arrayType = c.u32();
        const n = c.count();
        const values: GgufScalar[] = new Array(n);
        for (let j = 0; j < n; j++) {
          values[j] = readScalar(c, arrayType);
          if (j % VALUES_PER_PAUSE === VALUES_PER_PAUSE - 1) yield;
        }
        kv.set(key, { type, arrayType, value: values });
      } else {
        kv.set(key, { type, value: readScalar(c, type) });
      }
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.str();
      const nDims = c.u32();
      if (nDims < 1 || nDims > 4) throw new MobiError('NOT_GGUF', 'The GGUF tensor table is damaged.');
      const shape: number[] = [];
      for (let d = 0; d < nDims; d++) shape.push(Number(c.u64()));
      const type = c.u32();
      const offset = Number(c.u64());
      tensors.push({ name, shape, type, offset });
    }
    const alignKv = kv.get('general.alignment');
    const alignment = typeof alignKv?.value === 'number' ? alignKv.value : GGUF_DEFAULT_ALIGNMENT;
    // The data section is padded to the alignment only when there are tensors.
    const dataOffset = tensors.length > 0 ? Math.ceil(c.pos / alignment) * alignment : c.pos;
    let dataEnd = dataOffset;
    for (const t of tensors) {
      const rows = t.shape.slice(1).reduce((a, b) => a * b, 1);
      let bytes: number;
      try {
        bytes = rowBytes(t.type, t.shape[0]!) * rows;
      } catch {
        bytes = 0; // a type this reader does not size; llama.cpp will validate it
      }
      dataEnd = Math.max(dataEnd, dataOffset + t.offset + bytes);
    }
    if (dataEnd > fileSize) {
      throw new MobiError('TRUNCATED_GGUF', `${path} is truncated: its tensors need ${dataEnd} bytes but the file has ${fileSize}. Download or generate it again.`);
    }
    return { path, version, kv, tensors, dataOffset, fileSize };
  } finally {
    fs.closeSync(fd);
  }
}

/** A metadata value as a string or number, or undefined when absent. */
export function ggufString(file: GgufFile, key: string): string | undefined {
  const v = file.kv.get(key)?.value;
  return typeof v === 'string' ? v : undefined;
}
export function ggufNumber(file: GgufFile, key: string): number | undefined {
  const v = file.kv.get(key)?.value;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}
