import { AdapterConfig, parameterNames, parameterShape, SideNetworkShape } from '../../common/AdapterConfig';
import type { JobConfig, ModelSpec } from '../../common/messages';
import { SeededRandom } from '../../common/SeededRandom';

/**
 * The side network's definition, whatever runs it: its constants, shape,
 * parameter names and shapes, seeded initial values, and the adapter config
 * the server writes for it. The training engine (./onnx/) and the
 * TensorFlow.js reference that checks it (test/helpers/tfjs/) both use it.
 */

export type { SideNetworkShape };
export { parameterNames, parameterShape };

/** Gate temperature: mu = sigmoid(alpha / GATE_TEMPERATURE). */
export const GATE_TEMPERATURE = 0.1;
/** Epsilon of the adapters' parameter-free RMS norm. */
export const ADAPTER_NORM_EPS = 1e-6;

export function sideShape(d: number, reduction: number, tappedLayers: number[]): SideNetworkShape {
  const r = Math.max(1, Math.round(d / reduction));
  return { d, r, b: r, tappedLayers };
}

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

/** Initial values: Down, Mid, Up random (seeded); alpha 0; Out ZERO (step 0 = backbone). */
export function initialParameters(shape: SideNetworkShape, seed: number): Map<string, Float32Array> {
  const rng = new SeededRandom(seed);
  const out = new Map<string, Float32Array>();
  for (const name of parameterNames(shape)) {
    const dims = parameterShape(shape, name);
    const values = new Float32Array(dims.reduce((a, b) => a * b, 1));
    const kind = name.split('.')[0];
    const std = kind === 'down' ? 1 / Math.sqrt(shape.d) : kind === 'mid' ? 1 / Math.sqrt(shape.r) : kind === 'up' ? 0.1 / Math.sqrt(shape.b) : 0;
    if (std > 0) for (let i = 0; i < values.length; i++) values[i] = rng.normal() * std;
    out.set(name, values);
  }
  return out;
}
