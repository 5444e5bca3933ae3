/**
 * What a server holding the frames can read back: the attacks of the privacy
 * audit (bench/privacy.ts), each with a positive control in
 * test/unit/harness/privacyAttacks.test.ts. They decode a layer's hidden
 * states (as the server dequantizes them) into token ids:
 *   nearest embedding  the input embedding nearest in angle to the state
 *                      (the input token, recovered from early layers)
 *   logit lens         the model's own public final norm and head applied to
 *                      the state: its top guess for the next token
 *   linear inverter    a linear map from the state to the input embedding,
 *                      fitted on public code, then the nearest embedding
 * Top ids come from the device head's ggml code (DeviceHead.guesses), so a
 * 32k-vocabulary lookup of thousands of rows takes seconds.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { GgufWriter } from '../extension/core/model/gguf/GgufWriter';

const GGML_F32 = 0;
/** Rows per head call. */
const ROWS_PER_CALL = 512;

/**
 * A lookup whose top id for a vector is the input embedding nearest to it in
 * angle: a GGUF "head" of the embedding rows scaled to unit length, with a
 * final norm of ones (which only rescales the vector). Written under `dir`.
 */
export async function nearestEmbeddingLookup(embeddings: Float32Array, d: number, dir: string, threads = 2): Promise<DeviceHead> {
  const V = embeddings.length / d;
  const unit = new Float32Array(embeddings.length);
  for (let v = 0; v < V; v++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += embeddings[v * d + i]! ** 2;
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 0;
    for (let i = 0; i < d; i++) unit[v * d + i] = embeddings[v * d + i]! * inv;
  }
  const file = path.join(dir, `nearest-embedding-${V}x${d}.gguf`);
  fs.mkdirSync(dir, { recursive: true });
  new GgufWriter()
    .tensor('output.weight', [d, V], GGML_F32, () => Buffer.from(unit.buffer, unit.byteOffset, unit.byteLength))
    .tensor('output_norm.weight', [d], GGML_F32, () => Buffer.from(new Float32Array(d).fill(1).buffer))
    .write(file);
  return DeviceHead.open(file, 1e-12, threads);
}

/** Each row's top id under `head`, for rows [n][d]. */
export async function topIds(head: DeviceHead, rows: Float32Array, n: number): Promise<Int32Array> {
  const d = head.hiddenSize;
  const out = new Int32Array(n);
  for (let r0 = 0; r0 < n; r0 += ROWS_PER_CALL) {
    const m = Math.min(ROWS_PER_CALL, n - r0);
    const { top } = await head.guesses(rows.subarray(r0 * d, (r0 + m) * d), new Int32Array(m));
    out.set(top, r0);
  }
  return out;
}

/** The share of positions where `guess` equals `truth`. */
export function share(guess: Int32Array, truth: Int32Array): number {
  let hit = 0;
  for (let i = 0; i < truth.length; i++) if (guess[i] === truth[i]) hit++;
  return truth.length === 0 ? 0 : hit / truth.length;
}

/** A fitted linear map [x, 1] -> y: weights [(dIn + 1) x dOut], row-major. */
export interface LinearMap {
  dIn: number;
  dOut: number;
  weights: Float64Array;
}

/**
 * Ridge regression of y [n][dOut] on x [n][dIn] with a bias: solves
 * (X^T X + lambda I) W = X^T Y by Cholesky, lambda = `ridge` x the mean
 * diagonal of X^T X.
 */
export function fitLinearMap(x: Float32Array, y: Float32Array, n: number, dIn: number, dOut: number, ridge = 1e-3): LinearMap {
  const k = dIn + 1;
  const G = new Float64Array(k * k);
  const C = new Float64Array(k * dOut);
  const row = new Float64Array(k);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < dIn; i++) row[i] = x[t * dIn + i]!;
    row[dIn] = 1;
    for (let i = 0; i < k; i++) {
      const ri = row[i]!;
      if (ri === 0) continue;
      const gi = i * k;
      for (let j = i; j < k; j++) G[gi + j]! += ri * row[j]!;
      const ci = i * dOut;
      for (let j = 0; j < dOut; j++) C[ci + j]! += ri * y[t * dOut + j]!;
    }
  }
  let trace = 0;
  for (let i = 0; i < k; i++) trace += G[i * k + i]!;
  const lambda = (ridge * trace) / k;
  for (let i = 0; i < k; i++) {
    G[i * k + i]! += lambda;
    for (let j = 0; j < i; j++) G[i * k + j] = G[j * k + i]!;
  }
  // Cholesky: G = L L^T (L in the lower triangle of G).
  for (let j = 0; j < k; j++) {
    let s = G[j * k + j]!;
    for (let p = 0; p < j; p++) s -= G[j * k + p]! ** 2;
    if (!(s > 0)) throw new RangeError('the inverter\'s normal equations are not positive definite');
    const l = Math.sqrt(s);
    G[j * k + j] = l;
    for (let i = j + 1; i < k; i++) {
      let v = G[i * k + j]!;
      for (let p = 0; p < j; p++) v -= G[i * k + p]! * G[j * k + p]!;
      G[i * k + j] = v / l;
    }
  }
  // Forward then back substitution for every output column at once.
  const W = Float64Array.from(C);
  for (let i = 0; i < k; i++) {
    for (let p = 0; p < i; p++) {
      const l = G[i * k + p]!;
      for (let j = 0; j < dOut; j++) W[i * dOut + j]! -= l * W[p * dOut + j]!;
    }
    const l = G[i * k + i]!;
    for (let j = 0; j < dOut; j++) W[i * dOut + j]! /= l;
  }
  for (let i = k - 1; i >= 0; i--) {
    for (let p = i + 1; p < k; p++) {
      const l = G[p * k + i]!;
      for (let j = 0; j < dOut; j++) W[i * dOut + j]! -= l * W[p * dOut + j]!;
    }
    const l = G[i * k + i]!;
    for (let j = 0; j < dOut; j++) W[i * dOut + j]! /= l;
  }
  return { dIn, dOut, weights: W };
}

/** y = [x, 1] W for rows x [n][dIn]. */
export function applyLinearMap(m: LinearMap, x: Float32Array, n: number): Float32Array {
  const { dIn, dOut, weights: W } = m;
  const out = new Float32Array(n * dOut);
  const acc = new Float64Array(dOut);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < dOut; j++) acc[j] = W[dIn * dOut + j]!;
    for (let i = 0; i < dIn; i++) {
      const xi = x[t * dIn + i]!;
      if (xi === 0) continue;
      const wi = i * dOut;
      for (let j = 0; j < dOut; j++) acc[j]! += xi * W[wi + j]!;
    }
    for (let j = 0; j < dOut; j++) out[t * dOut + j] = acc[j]!;
  }
  return out;
}

/** The embedding rows of `ids` from a [V][d] table: [ids.length][d]. */
export function rowsOf(table: Float32Array, d: number, ids: Int32Array): Float32Array {
  const out = new Float32Array(ids.length * d);
  for (let t = 0; t < ids.length; t++) out.set(table.subarray(ids[t]! * d, (ids[t]! + 1) * d), t * d);
  return out;
}
