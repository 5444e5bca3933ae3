/**
 * Where full fine-tuning's gain sits (issue 24, part 5): a model file with
 * some tensors taken from another of the same shape, so the held-out loss of
 * "the peer's model with the pretrained head" and "the pretrained model with
 * the peer's head" can be measured.
 */
import * as fs from 'node:fs';
import { GgufFile, GgufTensorInfo, readGgufFile } from '../extension/core/model/gguf/GgufFile';
import { GgufWriter } from '../extension/core/model/gguf/GgufWriter';
import { rowBytes } from '../extension/core/model/gguf/ggmlTypes';

/** The head and the final norm, which read the last hidden state. */
export const HEAD_TENSORS = ['output.weight', 'output_norm.weight'];

function tensorBytes(file: GgufFile, t: GgufTensorInfo): Buffer {
  const bytes = rowBytes(t.type, t.shape[0]!) * t.shape.slice(1).reduce((a, b) => a * b, 1);
  const out = Buffer.alloc(bytes);
  const fd = fs.openSync(file.path, 'r');
  try {
    fs.readSync(fd, out, 0, bytes, file.dataOffset + t.offset);
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** Writes `out`: `model` with the tensors named in `names` taken from `donor` (same names, shapes and types). */
export function withTensorsFrom(model: string, donor: string, names: string[], out: string): void {
  const a = readGgufFile(model);
  const b = readGgufFile(donor);
  const w = new GgufWriter();
  for (const [key, entry] of a.kv) if (key !== 'general.alignment') w.set(key, entry);
  for (const t of a.tensors) {
    const from = names.includes(t.name) ? b : a;
    const src = from.tensors.find((x) => x.name === t.name);
    if (!src || src.type !== t.type || src.shape.join() !== t.shape.join()) throw new RangeError(`${donor} has no tensor ${t.name} of ${model}'s shape and type`);
    w.tensor(t.name, t.shape, t.type, () => tensorBytes(from, src));
  }
  w.write(out);
}
