import { backboneInitNames, hasAttention, parameterCount, SideNetworkShape } from '../../../common/AdapterConfig';
import { readModelTensor } from '../model/Backbone';
import { readGgufFileAsync } from '../model/gguf/GgufFile';
import { MobiError } from '../MobiError';

/**
 * A side network's starting values as a reduced copy of the backbone's own
 * weights (Ladder Side-Tuning's initialisation), computed on the device, which
 * holds the weights the server never sees. One set of r channels of the
 * hidden state (those the head weighs most: the largest column norms of the
 * head matrix) is kept throughout:
 *
 *   down.k  reads those channels of layer k (a 0/1 selection)
 *   wq/wk/wv/wo.k  the backbone layer's attention matrices at those channels
 *           (keys and values of a grouped-query model at the channel modulo
 *           their width)
 *   mid.k   the layer's ffn_up rows of the b largest units, at those channels
 *   up.k    the layer's ffn_down at those units and channels
 *
 * scaled by sqrt(fan-in / reduced fan-in) so a reduced product keeps the
 * full one's magnitude. Gates and Out are not included (Out stays zero, so
 * step 0 still reproduces the backbone). Returns the values of
 * backboneInitNames(shape), float32, concatenated in that order.
 */
export async function backboneInit(modelPath: string, headTensor: string, shape: SideNetworkShape): Promise<Float32Array> {
  const { d, r, b } = shape;
  const names = new Set((await readGgufFileAsync(modelPath)).tensors.map((t) => t.name));
  const channels = largest(await headColumnNorms(modelPath, headTensor, d), r);
  const values = new Map<string, Float32Array>();
  for (const [k, layer] of shape.tappedLayers.entries()) {
    const down = new Float32Array(d * r);
    channels.forEach((c, j) => (down[c * r + j] = 1));
    values.set(`down.${k}`, down);
    if (hasAttention(shape, k)) {
      for (const [name, tensor] of [['wq', 'attn_q'], ['wk', 'attn_k'], ['wv', 'attn_v'], ['wo', 'attn_output']] as const) {
        const w = await attentionMatrix(modelPath, names, layer, tensor, d);
        const rows = w.data.length / d; // output width (smaller than d for grouped keys and values)
        const m = new Float32Array(r * r);
        const scale = Math.sqrt(d / r);
        for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) m[i * r + j] = w.data[(channels[j]! % rows) * d + channels[i]!]! * scale;
        values.set(`${name}.${k}`, m);
      }
    }
    const downW = await layerTensor(modelPath, layer, 'ffn_down', undefined); // [d][ff]
    const ff = downW.shape[0]!;
    const upW = await upRows(modelPath, names, layer, d, ff); // [ff][d]
    const units = largest(rowNorms(upW.data, d, channels), b);
    const mid = new Float32Array(r * b);
    for (let i = 0; i < r; i++) for (let u = 0; u < b; u++) mid[i * b + u] = upW.data[units[u]! * d + channels[i]!]! * Math.sqrt(d / r);
    values.set(`mid.${k}`, mid);
    const up = new Float32Array(b * r);
    for (let u = 0; u < b; u++) for (let j = 0; j < r; j++) up[u * r + j] = downW.data[channels[j]! * ff + units[u]!]! * Math.sqrt(ff / b);
    values.set(`up.${k}`, up);
  }
  const initNames = backboneInitNames(shape);
  const out = new Float32Array(parameterCount(shape, initNames));
  let at = 0;
  for (const n of initNames) {
    out.set(values.get(n)!, at);
    at += values.get(n)!.length;
  }
  return out;
}

/** Layer `layer`'s tensor `name`, which must have rows of `rowLength` values (any length when undefined). */
async function layerTensor(modelPath: string, layer: number, name: string, rowLength: number | undefined): Promise<{ data: Float32Array; shape: number[] }> {
  const t = await readModelTensor(modelPath, `blk.${layer}.${name}.weight`);
  if (rowLength !== undefined && t.shape[0] !== rowLength) throw new MobiError('UNSUPPORTED_ARCHITECTURE', `blk.${layer}.${name}.weight has rows of ${t.shape[0]} values, not ${rowLength}; this model cannot initialise a side network from its weights.`);
  return t;
}

/**
 * One of a layer's attention matrices [out][d]: its own tensor, or its rows
 * of attn_qkv where the model keeps the three together (phi3: queries, then
 * keys, then values; the queries d wide, keys and values alike).
 */
async function attentionMatrix(modelPath: string, names: Set<string>, layer: number, tensor: 'attn_q' | 'attn_k' | 'attn_v' | 'attn_output', d: number): Promise<{ data: Float32Array }> {
  if (tensor === 'attn_output' || names.has(`blk.${layer}.${tensor}.weight`) || !names.has(`blk.${layer}.attn_qkv.weight`)) return layerTensor(modelPath, layer, tensor, d);
  const qkv = await layerTensor(modelPath, layer, 'attn_qkv', d);
  const kv = (qkv.data.length / d - d) / 2; // keys' (and values') width
  const [from, width] = tensor === 'attn_q' ? [0, d] : tensor === 'attn_k' ? [d, kv] : [d + kv, kv];
  return { data: qkv.data.subarray(from * d, (from + width) * d) };
}

/** A layer's ffn_up [ff][d]: the tensor, or its second half where it holds the gate's rows first and there is no ffn_gate (phi3). */
async function upRows(modelPath: string, names: Set<string>, layer: number, d: number, ff: number): Promise<{ data: Float32Array }> {
  const up = await layerTensor(modelPath, layer, 'ffn_up', d);
  const fused = !names.has(`blk.${layer}.ffn_gate.weight`) && up.data.length === 2 * ff * d;
  if (fused) return { data: up.data.subarray(ff * d) };
  if (up.data.length !== ff * d) throw new MobiError('UNSUPPORTED_ARCHITECTURE', `blk.${layer}.ffn_up.weight has ${up.data.length / d} rows where ffn_down has ${ff} units; this model cannot initialise a side network from its weights.`);
  return up;
}

/** Norm of each of the d columns of the head [vocabulary][d], read a block of rows at a time (a whole float32 copy of a 150k vocabulary would be over 500 MB). */
async function headColumnNorms(modelPath: string, headTensor: string, d: number): Promise<Float64Array> {
  const norms = new Float64Array(d);
  const rows = (await readModelTensor(modelPath, headTensor, 0, 1)).shape[1]!;
  for (let start = 0; start < rows; start += HEAD_ROWS_PER_READ) {
    const { data } = await readModelTensor(modelPath, headTensor, start, Math.min(HEAD_ROWS_PER_READ, rows - start));
    for (let i = 0; i < data.length; i++) norms[i % d] += data[i]! * data[i]!;
  }
  return norms;
}

const HEAD_ROWS_PER_READ = 8192;

/** Norm of each row of a row-major [rows][d] matrix, over the given columns only. */
function rowNorms(data: Float32Array, d: number, columns: number[]): Float64Array {
  const norms = new Float64Array(data.length / d);
  for (let row = 0; row < norms.length; row++) for (const c of columns) norms[row] += data[row * d + c]! * data[row * d + c]!;
  return norms;
}

/** Indices of the n largest values, ascending by index (ties: the lower index). */
export function largest(values: Float64Array, n: number): number[] {
  const order = Array.from(values.keys()).sort((a, b) => values[b]! - values[a]! || a - b);
  return order.slice(0, Math.min(n, values.length)).sort((a, b) => a - b);
}
