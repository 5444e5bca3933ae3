import * as fs from 'node:fs';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufKv, GgufScalar, GgufValueType } from './GgufFile';
import { rowBytes } from './ggmlTypes';
import { writeAll, writeFileAtomicWith } from '../../../../common/atomicWrite';
import { MobiError } from '../../MobiError';

interface PendingTensor {
  name: string;
  shape: number[];
  type: number;
  bytes: number;
  /** Produces the encoded data when it is written (keeps memory flat). */
  produce: () => Buffer;
}

function scalarBytes(type: number, value: GgufScalar): Buffer {
  let b: Buffer;
  switch (type) {
    case GgufValueType.UINT8: b = Buffer.alloc(1); b.writeUInt8(value as number); return b;
    case GgufValueType.INT8: b = Buffer.alloc(1); b.writeInt8(value as number); return b;
    case GgufValueType.UINT16: b = Buffer.alloc(2); b.writeUInt16LE(value as number); return b;
    case GgufValueType.INT16: b = Buffer.alloc(2); b.writeInt16LE(value as number); return b;
    case GgufValueType.UINT32: b = Buffer.alloc(4); b.writeUInt32LE(value as number); return b;
    case GgufValueType.INT32: b = Buffer.alloc(4); b.writeInt32LE(value as number); return b;
    case GgufValueType.FLOAT32: b = Buffer.alloc(4); b.writeFloatLE(value as number); return b;
    case GgufValueType.FLOAT64: b = Buffer.alloc(8); b.writeDoubleLE(value as number); return b;
    case GgufValueType.BOOL: return Buffer.from([value ? 1 : 0]);
    case GgufValueType.UINT64: b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(value as number | bigint)); return b;
    case GgufValueType.INT64: b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(value as number | bigint)); return b;
    case GgufValueType.STRING: return stringBytes(value as string);
    default: throw new MobiError('UNSUPPORTED_TYPE', `unsupported GGUF value type ${type}`);
  }
}

function stringBytes(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(body.length));
  return Buffer.concat([len, body]);
}

function u32(v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; }
function u64(v: number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; }

/** Writes a GGUF v3 file: metadata, tensor table, aligned tensor data. */
export class GgufWriter {
  private readonly kv: [string, GgufKv][] = [];
  private readonly tensors: PendingTensor[] = [];

  set(key: string, entry: GgufKv): this {
    this.kv.push([key, entry]);
    return this;
  }
  string(key: string, value: string): this { return this.set(key, { type: GgufValueType.STRING, value }); }
  u32(key: string, value: number): this { return this.set(key, { type: GgufValueType.UINT32, value }); }
  f32(key: string, value: number): this { return this.set(key, { type: GgufValueType.FLOAT32, value }); }
  bool(key: string, value: boolean): this { return this.set(key, { type: GgufValueType.BOOL, value }); }
  array(key: string, arrayType: number, value: GgufScalar[]): this {
    return this.set(key, { type: GgufValueType.ARRAY, arrayType, value });
  }

  /** shape in ggml order ([row length, rows]). */
  tensor(name: string, shape: number[], type: number, produce: () => Buffer): this {
    const rows = shape.slice(1).reduce((a, b) => a * b, 1);
    this.tensors.push({ name, shape, type, bytes: rowBytes(type, shape[0]!) * rows, produce });
    return this;
  }

  /** Writes to `path` atomically (temporary file, fsync, rename), so a failure leaves nothing half-written. */
  write(path: string): void {
    const align = GGUF_DEFAULT_ALIGNMENT;
    const header: Buffer[] = [u32(GGUF_MAGIC), u32(3), u64(this.tensors.length), u64(this.kv.length)];
    for (const [key, entry] of this.kv) {
      header.push(stringBytes(key), u32(entry.type));
      if (entry.type === GgufValueType.ARRAY) {
        const values = entry.value as GgufScalar[];
        header.push(u32(entry.arrayType!), u64(values.length));
        for (const v of values) header.push(scalarBytes(entry.arrayType!, v));
      } else {
        header.push(scalarBytes(entry.type, entry.value as GgufScalar));
      }
    }
    let offset = 0;
    const offsets: number[] = [];
    for (const t of this.tensors) {
      header.push(stringBytes(t.name), u32(t.shape.length));
      for (const d of t.shape) header.push(u64(d));
      header.push(u32(t.type), u64(offset));
      offsets.push(offset);
      offset = Math.ceil((offset + t.bytes) / align) * align;
    }
    writeFileAtomicWith(path, (fd) => {
      let pos = 0;
      const put = (b: Buffer): void => {
        writeAll(fd, b, pos);
        pos += b.length;
      };
      for (const b of header) put(b);
      const dataStart = Math.ceil(pos / align) * align;
      this.tensors.forEach((t, i) => {
        pos = dataStart + offsets[i]!;
        const data = t.produce();
        if (data.length !== t.bytes) throw new MobiError('BAD_ARGUMENT', `tensor ${t.name}: produced ${data.length} bytes, expected ${t.bytes}`);
        put(data);
      });
      fs.ftruncateSync(fd, Math.max(pos, dataStart + offset));
    });
  }
}
