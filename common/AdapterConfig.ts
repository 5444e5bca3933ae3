import { AdapterFormatError } from './AdapterFormatError';
import { JobConfigSchema } from './messages';
import { checkSchema, Fields } from './schema';

/**
 * What a device needs to run a trained side network, stored in the adapter
 * file's header (`config`). The server writes it (server/TrainingJob.ts); the
 * device reads it (extension/core/Backbone.ts) and hands its numbers to the
 * native loader (extension/native/NativeAddon.ts): one definition for all
 * three. Changing it means a new ADAPTER_FORMAT_VERSION (common/AdapterFile.ts).
 */
export const SideNetworkShapeSchema = {
  /** Backbone hidden size. */
  d: 'uint',
  /** Side width r = d / reduction. */
  r: 'uint',
  /** Bottleneck width inside each adapter (Mid: r -> b, Up: b -> r). */
  b: 'uint',
  /** Backbone layers feeding the ladder, ascending; the last is the backbone's last layer. */
  tappedLayers: 'uint[]',
} as const;
export type SideNetworkShape = Fields<typeof SideNetworkShapeSchema>;

export const AdapterConfigSchema = {
  shape: SideNetworkShapeSchema,
  /** Layers of the backbone the adapter was trained on. */
  backboneLayers: 'uint',
  hiddenSize: 'uint',
  /** Epsilon of the backbone's final norm (GGUF metadata). */
  normEpsilon: 'number',
  /** mu = sigmoid(alpha / gateTemperature). */
  gateTemperature: 'number',
  /** Epsilon of the adapters' parameter-free RMS norm. */
  adapterNormEpsilon: 'number',
  /** The GELU form the side network uses. */
  gelu: ['tanh'],
  /** The job's settings (for the record; the device does not need them to run the adapter). */
  job: JobConfigSchema,
} as const;
export type AdapterConfig = Fields<typeof AdapterConfigSchema>;

/**
 * Validates an adapter header's `config`: the schema, then what the schema
 * cannot say (positive widths, ascending layers ending with the last layer,
 * positive constants). Throws ADAPTER_CORRUPT with the first problem.
 */
export function parseAdapterConfig(value: unknown): AdapterConfig {
  const problem = checkSchema(value, AdapterConfigSchema, 'config') ?? semanticProblem(value as AdapterConfig);
  if (problem) throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter header is damaged: ${problem}.`);
  return value as AdapterConfig;
}

function semanticProblem(c: AdapterConfig): string | undefined {
  const { d, r, b, tappedLayers: t } = c.shape;
  if (d < 1 || r < 1 || b < 1) return 'config.shape widths must be positive';
  if (d !== c.hiddenSize) return 'config.shape.d must equal config.hiddenSize';
  if (t.length === 0 || t.some((x, i) => i > 0 && x <= t[i - 1]!)) return 'config.shape.tappedLayers must ascend';
  if (t[t.length - 1] !== c.backboneLayers - 1) return 'config.shape.tappedLayers must end with the last layer';
  if (!(c.gateTemperature > 0) || !(c.adapterNormEpsilon > 0) || !(c.normEpsilon > 0)) return 'config constants must be positive';
  return undefined;
}
