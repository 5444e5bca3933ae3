import { runSteps, runStepsSliced } from '../../common/sliced';
import { AdapterConfig, attentionBlocks, attentionHeadsOf, hasAttention, headParameterNames, ladderParameterNames, MAX_HEAD_WIDTH, parameterNames, parameterShape, parameterSize, SideNetworkShape, sideShape } from '../../common/AdapterConfig';
import type { JobConfig, ModelSpec } from '../../common/messages';
import { SeededRandom } from '../../common/SeededRandom';
import { initialHeadUpdate } from '../../common/headUpdateInit';

/**
 * The side network's definition, whatever runs it: its constants, shape,
 * parameter names and shapes, seeded initial values, and the adapter config
 * the server writes for it. The training engine (./onnx/) and the
 * TensorFlow.js reference that checks it (harness/tfjs/) both use it.
 */

export type { SideNetworkShape };
export { attentionBlocks, attentionHeadsOf, hasAttention, headParameterNames, ladderParameterNames, MAX_HEAD_WIDTH, parameterNames, parameterShape, sideShape };

/** Base of the side network's rotary position embedding. */
export const ROPE_BASE = 10_000;

/** RoPE tables for positions 0..T-1 at head width e: cos and sin, each [T][e/2] (pair i rotates dims i and i + e/2). */
export function ropeTables(T: number, width: number): { cos: Float32Array; sin: Float32Array } {
  const half = width / 2;
  const cos = new Float32Array(T * half);
  const sin = new Float32Array(T * half);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * Math.pow(ROPE_BASE, (-2 * i) / width);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Gate temperature: mu = sigmoid(alpha / GATE_TEMPERATURE). */
export const GATE_TEMPERATURE = 0.1;
/** Epsilon of the adapters' parameter-free RMS norm. */
export const ADAPTER_NORM_EPS = 1e-6;

/** The adapter file's config for a side network of `shape` trained on `model` with `job` (common/AdapterConfig.ts). */
export function adapterConfig(shape: SideNetworkShape, model: Pick<ModelSpec, 'layers' | 'hiddenSize' | 'normEpsilon'>, job: JobConfig): AdapterConfig {
  return {
    shape,
    backboneLayers: model.layers,
    hiddenSize: model.hiddenSize,
    normEpsilon: model.normEpsilon,
    gateTemperature: GATE_TEMPERATURE,
    adapterNormEpsilon: ADAPTER_NORM_EPS,
    gelu: 'tanh',
    job,
  };
}

/** Values filled between two yields of initialParameterSteps (about 10 ms of work). */
const VALUES_PER_SLICE = 1 << 20;

/**
 * Initial values: Down, Mid, Up and the attention's Wq, Wk, Wv, Wo random
 * (seeded); alpha 0; Out ZERO (step 0 = backbone); the head update's A
 * random and B ZERO (step 0 = the backbone's head), drawn apart (initialHeadUpdate). A generator that pauses
 * every VALUES_PER_SLICE values, so a server can fill a large side network
 * without holding its event loop (initialParametersAsync).
 */
function* initialParameterSteps(shape: SideNetworkShape, seed: number): Generator<void, Map<string, Float32Array>> {
  const rng = new SeededRandom(seed);
  const out = new Map<string, Float32Array>();
  for (const name of ladderParameterNames(shape)) {
    const values = new Float32Array(parameterSize(shape, name));
    const kind = name.split('.')[0];
    const std = kind === 'down' ? 1 / Math.sqrt(shape.d)
      : kind === 'mid' || kind === 'wq' || kind === 'wk' || kind === 'wv' ? 1 / Math.sqrt(shape.r)
      : kind === 'up' ? 0.1 / Math.sqrt(shape.b)
      : kind === 'wo' ? 0.1 / Math.sqrt(shape.r)
      : 0;
    for (let i = 0; std > 0 && i < values.length; i++) {
      values[i] = rng.normal() * std;
      if (i % VALUES_PER_SLICE === VALUES_PER_SLICE - 1) yield;
    }
    out.set(name, values);
  }
  if (shape.headRank && shape.vocab) {
    const head = initialHeadUpdate(shape.d, shape.vocab, shape.headRank, seed);
    out.set('head_a', head.a);
    out.set('head_b', head.b);
  }
  return out;
}

export function initialParameters(shape: SideNetworkShape, seed: number): Map<string, Float32Array> {
  return runSteps(initialParameterSteps(shape, seed));
}

/** The same values as initialParameters, with the event loop free between slices. */
export function initialParametersAsync(shape: SideNetworkShape, seed: number): Promise<Map<string, Float32Array>> {
  return runStepsSliced(initialParameterSteps(shape, seed));
}

/** How a version-2 side network pads a batch's sequences (rows concatenated in order) to [B, T] for attention. */
export interface PaddedLayout {
  B: number;
  T: number;
  /** [B*T]: the row at each padded position; `rows` (a zero row) past a sequence's end. */
  padIndex: BigInt64Array;
  /** [rows]: each row's padded position. */
  unpadIndex: BigInt64Array;
  /** [T][T]: 0 where position j may be seen from position i (j <= i), -1e9 elsewhere. */
  causalMask: Float32Array;
}

/** Refused sequence lengths: the caller turns this into its own typed error. */
export class LayoutError extends RangeError {}

export function paddedLayout(lengths: readonly number[], rows: number): PaddedLayout {
  const B = lengths.length;
  const total = lengths.reduce((a, b) => a + b, 0);
  if (B === 0 || total !== rows || lengths.some((x) => !Number.isInteger(x) || x < 1)) {
    throw new LayoutError(`sequence lengths must be positive and sum to the batch's ${rows} rows`);
  }
  const T = Math.max(...lengths);
  const padIndex = new BigInt64Array(B * T).fill(BigInt(rows));
  const unpadIndex = new BigInt64Array(rows);
  let row = 0;
  lengths.forEach((len, b) => {
    for (let t = 0; t < len; t++, row++) {
      padIndex[b * T + t] = BigInt(row);
      unpadIndex[row] = BigInt(b * T + t);
    }
  });
  const causalMask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) causalMask[i * T + j] = -1e9;
  return { B, T, padIndex, unpadIndex, causalMask };
}
