/**
 * The stand-in's weights in and out of GGUF: read from a model whose tensors
 * are F32 or Q8_0 (dequantized as ggml does: scale times int8), written through writeTinyModel's layout and metadata with
 * the trained values, as F32 or Q8_0.
 */
import * as fs from 'node:fs';
import { readGgufFile } from '../../../extension/core/model/gguf/GgufFile';
import { GgmlType, QK, rowBytes } from '../../../extension/core/model/gguf/ggmlTypes';
import { fromHalf } from '../../../common/float16';
import { writeTinyModel } from '../../../extension/core/model/tinyModel';
import { PretrainShape } from './pretrainGraph';

/** Every tensor of a GGUF whose tensors are F32 or Q8_0, by name, as float32 (row-major). */
export function readWeights(file: string): Map<string, Float32Array> {
  const gguf = readGgufFile(file);
  const fd = fs.openSync(file, 'r');
  try {
    const out = new Map<string, Float32Array>();
    for (const t of gguf.tensors) {
      const count = t.shape.reduce((a, b) => a * b, 1);
      const values = new Float32Array(count);
      if (t.type === GgmlType.F32) fs.readSync(fd, new Uint8Array(values.buffer), 0, values.byteLength, gguf.dataOffset + t.offset);
      else if (t.type === GgmlType.Q8_0) {
        const raw = Buffer.alloc(rowBytes(GgmlType.Q8_0, count));
        fs.readSync(fd, raw, 0, raw.length, gguf.dataOffset + t.offset);
        for (let b = 0; b < count / QK; b++) {
          const scale = fromHalf(raw.readUInt16LE(b * 34));
          for (let j = 0; j < QK; j++) values[b * QK + j] = scale * raw.readInt8(b * 34 + 2 + j);
        }
      } else throw new RangeError(`${t.name} in ${file} is neither F32 nor Q8_0`);
      out.set(t.name, values);
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `weights` as a llama GGUF of `shape` with `vocab`'s tokenizer, matrices in `type`. */
export function writeStandIn(out: string, shape: PretrainShape, vocab: string, weights: Map<string, Float32Array>, type: 'f32' | 'q8_0', contextLength: number): void {
  writeTinyModel({
    out,
    layers: shape.layers,
    embd: shape.embd,
    heads: shape.heads,
    kvHeads: shape.heads,
    ff: shape.ff,
    type,
    vocab,
    contextLength,
    values: (name) => {
      const v = weights.get(name);
      if (v === undefined) throw new RangeError(`no weights for ${name}`);
      return v;
    },
  });
}
