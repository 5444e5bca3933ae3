/**
 * Where full fine-tuning's gain sits (issue 24, part 5): a model file with
 * some tensors taken from another of the same shape, so the held-out loss of
 * "the peer's model with the pretrained head" and "the pretrained model with
 * the peer's head" can be measured; and the pretrained model with only a
 * low-rank part of the peer's head change.
 */
import * as fs from 'node:fs';
import { GgufFile, GgufTensorInfo, readGgufFile } from '../../extension/core/model/gguf/GgufFile';
import { GgufWriter } from '../../extension/core/model/gguf/GgufWriter';
import { encodeTensor, GgmlType, rowBytes } from '../../extension/core/model/gguf/ggmlTypes';
import { readModelTensor } from '../../extension/core/model/Backbone';

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

/** Writes `out`: `a`'s metadata and tensors, each tensor's bytes from `replace` when it gives them, else `a`'s own. */
function rewrite(a: GgufFile, out: string, replace: (t: GgufTensorInfo) => Buffer | undefined): void {
  const w = new GgufWriter();
  for (const [key, entry] of a.kv) if (key !== 'general.alignment') w.set(key, entry);
  for (const t of a.tensors) w.tensor(t.name, t.shape, t.type, () => replace(t) ?? tensorBytes(a, t));
  w.write(out);
}

/** Writes `out`: `model` with the tensors named in `names` taken from `donor` (same names, shapes and types). */
export function withTensorsFrom(model: string, donor: string, names: string[], out: string): void {
  const a = readGgufFile(model);
  const b = readGgufFile(donor);
  for (const t of a.tensors.filter((x) => names.includes(x.name))) {
    const src = b.tensors.find((x) => x.name === t.name);
    if (!src || src.type !== t.type || src.shape.join() !== t.shape.join()) throw new RangeError(`${donor} has no tensor ${t.name} of ${model}'s shape and type`);
  }
  rewrite(a, out, (t) => (names.includes(t.name) ? tensorBytes(b, b.tensors.find((x) => x.name === t.name)!) : undefined));
}

/**
 * The top `rank` right singular vectors of the row-major [rows x cols] matrix
 * `m` (those of m^T m, by block power iteration with Gram-Schmidt), as `rank`
 * unit vectors of length cols.
 */
function topRightSingularVectors(m: Float32Array, rows: number, cols: number, rank: number): Float64Array[] {
  const g = new Float64Array(cols * cols);
  for (let r = 0; r < rows; r++) {
    const row = m.subarray(r * cols, (r + 1) * cols);
    for (let i = 0; i < cols; i++) {
      const v = row[i]!;
      if (v === 0) continue;
      for (let j = 0; j < cols; j++) g[i * cols + j]! += v * row[j]!;
    }
  }
  let basis = Array.from({ length: rank }, (_, k) => Float64Array.from({ length: cols }, (_, i) => Math.sin(1 + k * 7.1 + i * 0.37)));
  for (let iter = 0; iter < 100; iter++) {
    basis = basis.map((b) => {
      const out = new Float64Array(cols);
      for (let i = 0; i < cols; i++) {
        let s = 0;
        for (let j = 0; j < cols; j++) s += g[i * cols + j]! * b[j]!;
        out[i] = s;
      }
      return out;
    });
    for (let k = 0; k < rank; k++) {
      const b = basis[k]!;
      for (let p = 0; p < k; p++) {
        const q = basis[p]!;
        let dot = 0;
        for (let i = 0; i < cols; i++) dot += b[i]! * q[i]!;
        for (let i = 0; i < cols; i++) b[i]! -= dot * q[i]!;
      }
      const norm = Math.hypot(...b);
      for (let i = 0; i < cols; i++) b[i]! /= norm;
    }
  }
  return basis;
}

/**
 * Writes `out`: `model` whose head reads the final norm's output as `donor`'s
 * does, up to the best rank-`rank` approximation of the change (all of it
 * when rank is 0): what a low-rank head update could carry at best. The
 * final norm's gain is folded into the head (the head sees W diag(g)), since
 * full fine-tuning changes both: the change measured is
 * W1 diag(g1) - W0 diag(g0), applied as a change of `model`'s head.
 */
export async function withLowRankHeadDelta(model: string, donor: string, rank: number, out: string): Promise<void> {
  const a = readGgufFile(model);
  const head = a.tensors.find((t) => t.name === 'output.weight');
  if (!head || head.type !== GgmlType.F32) throw new RangeError(`${model} has no F32 output.weight`);
  const [cols, rows] = head.shape as [number, number];
  const w0 = (await readModelTensor(model, 'output.weight')).data;
  const g0 = (await readModelTensor(model, 'output_norm.weight')).data;
  const w1 = (await readModelTensor(donor, 'output.weight')).data;
  const g1 = (await readModelTensor(donor, 'output_norm.weight')).data;
  const delta = Float32Array.from(w1, (v, i) => v * g1[i % cols]! - w0[i]! * g0[i % cols]!);
  const basis = rank === 0 ? undefined : topRightSingularVectors(delta, rows, cols, rank);
  const moved = new Float32Array(w0);
  for (let r = 0; r < rows; r++) {
    const row = delta.subarray(r * cols, (r + 1) * cols);
    const part = new Float64Array(cols);
    if (basis === undefined) part.set(row);
    else {
      for (const v of basis) {
        let dot = 0;
        for (let i = 0; i < cols; i++) dot += row[i]! * v[i]!;
        for (let i = 0; i < cols; i++) part[i]! += dot * v[i]!;
      }
    }
    for (let i = 0; i < cols; i++) moved[r * cols + i]! += part[i]! / g0[i]!;
  }
  rewrite(a, out, (t) => (t === head ? encodeTensor(GgmlType.F32, moved) : undefined));
}
