import { MobiError } from '../MobiError';
import { GgufFile, ggufNumber } from './gguf/GgufFile';

/**
 * What a model does after its last layer, as the pinned llama.cpp release
 * does it (src/models/<architecture>.cpp): the final norm, the head's matrix
 * and anything applied to the logits. Every place that computes logits or
 * their gradient outside llama.cpp takes it from here: the device's head
 * (native HeadWeights), the head sent to a server, and the adapter's join at
 * inference (native SideNet).
 */
export interface HeadDescription {
  /**
   * The final norm: RMSNorm (y / rms(y) w), or LayerNorm with a bias
   * ((y - mean) / std w + b, starcoder2: output_norm.bias).
   */
  norm: 'rms' | 'layer';
  /** Its epsilon, from the GGUF metadata. */
  epsilon: number;
  /** The head's matrix: `output.weight`, or `token_embd.weight` when the head is tied to the embedding. */
  tensor: 'output.weight' | 'token_embd.weight';
  /**
   * What llama.cpp multiplies the logits by after the product (granite:
   * 1 / logit_scale; 1 for the others). Outside llama.cpp it is folded into
   * the final norm's weight: s (W z) = W (s z), so the head's input is s z.
   */
  logitMultiplier: number;
  /**
   * Final logit soft-capping c (gemma2's final_logit_softcapping): the
   * logits are c tanh(W z / c); 0 when none. A head update's B u is added
   * after the cap, where the adapter's join at inference adds it.
   */
  softCap: number;
}

/** How one architecture's graph ends, read off the pinned llama.cpp release. */
interface OutputStep {
  /** The final norm (llama.cpp's build_norm kind). */
  norm: 'rms' | 'layer';
  /** Whether the head is the embedding always (gemma: output.weight is never read), or only when output.weight is absent. */
  tied: 'always' | 'when-absent';
  /** granite: logits divided by `<arch>.logit_scale` (required). */
  logitScaleKey?: string;
  /** gemma2/3: `<arch>.final_logit_softcapping`, with llama.cpp's default when absent (gemma2 30, gemma3 0). */
  softCap?: { key: string; defaultValue: number };
}

const RMS_UNTIED: OutputStep = { norm: 'rms', tied: 'when-absent' };

/** Architectures whose output step is described (src/models/*.cpp of the pinned release). */
const OUTPUT_STEPS: Record<string, OutputStep> = {
  llama: RMS_UNTIED,
  qwen2: RMS_UNTIED,
  qwen3: RMS_UNTIED,
  phi3: RMS_UNTIED,
  gemma: { norm: 'rms', tied: 'always' },
  gemma2: { norm: 'rms', tied: 'always', softCap: { key: 'final_logit_softcapping', defaultValue: 30 } },
  gemma3: { norm: 'rms', tied: 'when-absent', softCap: { key: 'final_logit_softcapping', defaultValue: 0 } },
  granite: { ...RMS_UNTIED, logitScaleKey: 'logit_scale' },
  starcoder2: { norm: 'layer', tied: 'when-absent' },
};

/** The architectures the device accepts: those whose output step is described (describeHead still refuses a file whose step goes beyond it: an output bias, a head scale). */
export const SUPPORTED_ARCHITECTURES: readonly string[] = Object.keys(OUTPUT_STEPS);

function unsupported(file: GgufFile, arch: string, what: string): MobiError {
  return new MobiError('UNSUPPORTED_ARCHITECTURE', `${file.path} (${arch}): ${what}, which this version does not compute outside llama.cpp; its logits would be wrong, so the model is refused.`);
}

/** Reads the output step of `file` (architecture `arch`); refuses, naming it, a step that is not described. */
export function describeHead(file: GgufFile, arch: string): HeadDescription {
  const step = OUTPUT_STEPS[arch];
  if (step === undefined) {
    throw new MobiError('UNSUPPORTED_ARCHITECTURE', `Architecture "${arch}" is not supported: what its graph does after the last layer is not described; use one of ${SUPPORTED_ARCHITECTURES.join(', ')}.`);
  }
  const has = (name: string): boolean => file.tensors.some((t) => t.name === name);
  if (step.norm === 'layer' && !has('output_norm.bias')) throw new MobiError('NOT_GGUF', `${file.path} has no output_norm.bias, which llama.cpp requires for ${arch}.`);
  if (step.norm === 'rms' && has('output_norm.bias')) throw unsupported(file, arch, 'its final RMSNorm has a bias (output_norm.bias)');
  if (has('output.bias')) throw unsupported(file, arch, 'its head adds a bias to the logits (output.bias)');
  if (has('output.scale')) throw unsupported(file, arch, 'its head has a scale tensor (output.scale)');
  if (!has('output_norm.weight')) throw new MobiError('NOT_GGUF', `${file.path} has no output_norm.weight: not a complete model file.`);
  const softCap = step.softCap === undefined ? 0 : ggufNumber(file, `${arch}.${step.softCap.key}`) ?? step.softCap.defaultValue;
  if (!(softCap >= 0) || !Number.isFinite(softCap)) throw new MobiError('NOT_GGUF', `${file.path} has ${arch}.final_logit_softcapping = ${softCap}; it must be 0 or a positive number.`);
  let logitMultiplier = 1;
  if (step.logitScaleKey !== undefined) {
    const scale = ggufNumber(file, `${arch}.${step.logitScaleKey}`);
    if (scale === undefined) throw new MobiError('NOT_GGUF', `${file.path} lacks ${arch}.${step.logitScaleKey}, which llama.cpp requires for ${arch}.`);
    if (!(scale > 0) || !Number.isFinite(scale)) throw new MobiError('NOT_GGUF', `${file.path} has ${arch}.${step.logitScaleKey} = ${scale}; it must be a positive number.`);
    logitMultiplier = 1 / scale;
  }
  const epsilonKey = `${arch}.attention.${step.norm === 'layer' ? 'layer_norm_epsilon' : 'layer_norm_rms_epsilon'}`;
  const epsilon = ggufNumber(file, epsilonKey);
  if (epsilon === undefined) throw new MobiError('NOT_GGUF', `${file.path} lacks ${epsilonKey}.`);
  const tied = step.tied === 'always' || !has('output.weight');
  if (tied && !has('token_embd.weight')) throw new MobiError('NOT_GGUF', `${file.path} has no head: neither output.weight nor token_embd.weight.`);
  return { norm: step.norm, epsilon, tensor: tied ? 'token_embd.weight' : 'output.weight', logitMultiplier, softCap };
}
