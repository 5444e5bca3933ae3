import { AdapterFormatError } from './AdapterFormatError';
import { JOB_SETTINGS } from './jobSettings';
import { JobConfig, JobConfigSchema } from './messages';
import { checkSchema, Fields, optionalOneOf } from './schema';

/** The side network's design (the setting `sideNetwork`): 1 the per-token ladder, 2 with causal self-attention. */
export type SideNetworkDesign = (typeof JOB_SETTINGS.sideNetwork.values)[number];

/**
 * What a device needs to run a trained side network, stored in the adapter
 * file's header (`config`). The server writes it (server/TrainingJob.ts); the
 * device reads it (extension/core/model/Backbone.ts) and hands its numbers to the
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
  /**
   * The side network's design, named as the setting `sideNetwork` is: 1
   * (absent) the per-token ladder; 2 adds causal multi-head self-attention
   * with RoPE to its attention blocks (attentionBlocks(); README.md, Architecture).
   * Adapter formats 1-3 called it `version`.
   */
  sideNetwork: optionalOneOf(JOB_SETTINGS.sideNetwork.values),
  /** Attention heads of side network 2's attention blocks (r / attentionHeads is even); formats 1-3 called it `heads`. */
  attentionHeads: 'uint?',
  /**
   * Where the side network's output joins the backbone: absent or false,
   * before its final norm (added to the last layer's output); true, after it
   * (added to the normed hidden state the head reads, QST's form).
   */
  joinAfterNorm: 'boolean?',
  /**
   * Rank of the low-rank update of the backbone's head trained beside the
   * side network (absent or 0: none): logits = W z + head_b (head_a^T z), so
   * the rows of the head the workspace needs can move, which a change of the
   * hidden state alone cannot do (docs/benchmarks.md, the head's share).
   */
  headRank: 'uint?',
  /** The backbone's vocabulary size: head_b's rows (present when headRank is). */
  vocab: 'uint?',
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

/** Gate temperatures an adapter may declare (a tiny one overflows the gates). */
export const GATE_TEMPERATURE_RANGE = { min: 1e-3, max: 1e3 } as const;
/** Norm epsilons an adapter may declare (a subnormal one turns a zero row into NaN). */
export const EPSILON_RANGE = { min: 1e-12, max: 1 } as const;
/** Largest magnitude of a side-network weight (trained weights stay far below; 3e38 overflows every product). */
export const MAX_WEIGHT_MAGNITUDE = 1e6;

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
  const h = c.shape.attentionHeads;
  if (attentionBlocks(c.shape) > 0 && !(h && h > 0 && r % (2 * h) === 0)) return 'config.shape.attentionHeads must divide r into even head widths';
  if ((c.shape.headRank ?? 0) > MAX_HEAD_RANK) return `config.shape.headRank must be at most ${MAX_HEAD_RANK}`;
  if ((c.shape.headRank ?? 0) > 0 && !(c.shape.vocab && c.shape.vocab > 0)) return 'config.shape.vocab must be given with a head update';
  if (d !== c.hiddenSize) return 'config.shape.d must equal config.hiddenSize';
  if (t.length === 0 || t.some((x, i) => i > 0 && x <= t[i - 1]!)) return 'config.shape.tappedLayers must ascend';
  if (t[t.length - 1] !== c.backboneLayers - 1) return 'config.shape.tappedLayers must end with the last layer';
  const within = (x: number, r: { min: number; max: number }): boolean => x >= r.min && x <= r.max;
  if (!within(c.gateTemperature, GATE_TEMPERATURE_RANGE)) return `config.gateTemperature must be from ${GATE_TEMPERATURE_RANGE.min} to ${GATE_TEMPERATURE_RANGE.max}`;
  if (!within(c.adapterNormEpsilon, EPSILON_RANGE) || !within(c.normEpsilon, EPSILON_RANGE)) return `config epsilons must be from ${EPSILON_RANGE.min} to ${EPSILON_RANGE.max}`;
  return undefined;
}

/**
 * How many blocks of `shape` have self-attention: the first ones, in order.
 * Side network 2 gives it to every block but the last (whose output joins the
 * backbone). The one place this rule is written; the server's graphs, the
 * TypeScript reference and the native reader (handed this number) follow it.
 */
export function attentionBlocks(shape: SideNetworkShape): number {
  return (shape.sideNetwork ?? 1) === 2 ? shape.tappedLayers.length - 1 : 0;
}

/** Whether block k of `shape` has self-attention. */
export function hasAttention(shape: SideNetworkShape, k: number): boolean {
  return k < attentionBlocks(shape);
}

/** Attention heads and head width of `shape`'s attention blocks. */
export function attentionHeadsOf(shape: SideNetworkShape): { attentionHeads: number; width: number } {
  const attentionHeads = shape.attentionHeads ?? 1;
  return { attentionHeads, width: shape.r / attentionHeads };
}

/**
 * An adapter config written by formats 1-3 in today's names (`version` is now
 * `sideNetwork`, `heads` is `attentionHeads`); other values are left as they are
 * for parseAdapterConfig to check.
 */
export function renameOlderShape(config: unknown): unknown {
  const shape = (config as { shape?: unknown } | null)?.shape;
  if (typeof shape !== 'object' || shape === null || Array.isArray(shape)) return config;
  const { version, heads, ...rest } = shape as Record<string, unknown>;
  return { ...(config as object), shape: { ...rest, ...(version !== undefined ? { sideNetwork: version } : {}), ...(heads !== undefined ? { attentionHeads: heads } : {}) } };
}

/** Highest rank of the head update (the setting headRank's maximum). */
export const MAX_HEAD_RANK = JOB_SETTINGS.headRank.max;

/** Widest attention head of side network 2. */
export const MAX_HEAD_WIDTH = 32;

/**
 * The side network for hidden size d at width d / reduction. Version 2 rounds
 * r up to even and splits it into heads of the widest even width <= 32 that
 * divides it (r 32: 1 head; 112: 4 heads of 28).
 */
export function sideShape(
  d: number, reduction: number, tappedLayers: number[], sideNetwork: SideNetworkDesign = 1, joinAfterNorm = false, head?: { rank: number; vocab: number },
): SideNetworkShape {
  const options = { ...(joinAfterNorm ? { joinAfterNorm: true } : {}), ...(head && head.rank > 0 ? { headRank: head.rank, vocab: head.vocab } : {}) };
  const r0 = Math.max(1, Math.round(d / reduction));
  if (sideNetwork === 1) return { d, r: r0, b: r0, tappedLayers, ...options };
  const r = r0 + (r0 % 2);
  let width = Math.min(MAX_HEAD_WIDTH, r) & ~1;
  while (r % width !== 0) width -= 2;
  return { d, r, b: r, tappedLayers, sideNetwork: 2, attentionHeads: r / width, ...options };
}

/**
 * The side network the server trains for a job's config, on a model of hidden
 * size d and its vocabulary (device and server derive it alike). A
 * label-private job's head update is the device's (it is trained from the
 * target ids): the server's shape has none, the adapter's has it (adapterShape).
 */
export function jobShape(c: JobConfig, model: { hiddenSize: number; vocabularySize: number }): SideNetworkShape {
  return c.labelPrivate ? shapeOf(c, model, false) : shapeOf(c, model, true);
}

/** The finished adapter's shape: the side network with the head update, whoever trained it. */
export function adapterShape(c: JobConfig, model: { hiddenSize: number; vocabularySize: number }): SideNetworkShape {
  return shapeOf(c, model, true);
}

function shapeOf(c: JobConfig, model: { hiddenSize: number; vocabularySize: number }, withHead: boolean): SideNetworkShape {
  const head = withHead && c.headRank ? { rank: c.headRank, vocab: model.vocabularySize } : undefined;
  return sideShape(model.hiddenSize, c.reduction, c.tappedLayers, c.sideNetwork ?? 1, c.joinAfterNorm === true, head);
}

/**
 * The parameters a device initialises from its backbone's weights (a job with
 * `initFromBackbone`), in the order of parameterNames: every matrix of every
 * block; the gates and Out keep their usual start (Out zero, so step 0 still
 * reproduces the backbone).
 */
export function backboneInitNames(shape: SideNetworkShape): string[] {
  return ladderParameterNames(shape).filter((n) => n !== 'out' && !n.startsWith('alpha.'));
}

/** The head update's parameters: head_a [d, rank] (z -> u) and head_b [vocab, rank] (one row per vocabulary entry), or none. */
export function headParameterNames(shape: SideNetworkShape): string[] {
  return (shape.headRank ?? 0) > 0 ? ['head_a', 'head_b'] : [];
}

/** Parameter names, in a fixed order (adapter file, optimizer state): the side network's, then the head update's. */
export function parameterNames(shape: SideNetworkShape): string[] {
  return [...ladderParameterNames(shape), ...headParameterNames(shape)];
}

/** The side network's own parameters (what its graphs take), in order. */
export function ladderParameterNames(shape: SideNetworkShape): string[] {
  const names: string[] = [];
  shape.tappedLayers.forEach((_, k) => {
    names.push(`down.${k}`, `alpha.${k}`);
    if (hasAttention(shape, k)) names.push(`wq.${k}`, `wk.${k}`, `wv.${k}`, `wo.${k}`);
    names.push(`mid.${k}`, `up.${k}`);
  });
  names.push('out');
  return names;
}

/** The shape of parameter `name`: [in, out] for matrices, [1] for a gate. */
export function parameterShape(shape: SideNetworkShape, name: string): number[] {
  const kind = name.split('.')[0];
  switch (kind) {
    case 'down': return [shape.d, shape.r];
    case 'alpha': return [1];
    case 'mid': return [shape.r, shape.b];
    case 'up': return [shape.b, shape.r];
    case 'out': return [shape.r, shape.d];
    case 'wq': case 'wk': case 'wv': case 'wo': return [shape.r, shape.r];
    case 'head_a': if (shape.headRank) return [shape.d, shape.headRank]; break;
    case 'head_b': if (shape.headRank && shape.vocab) return [shape.vocab, shape.headRank]; break;
  }
  throw new AdapterFormatError('ADAPTER_CORRUPT', `unknown side-network parameter ${name.slice(0, 40)}`);
}

/** Values of parameter `name` of `shape`. */
export function parameterSize(shape: SideNetworkShape, name: string): number {
  return parameterShape(shape, name).reduce((a, b) => a * b, 1);
}

/** Values of the parameters `names` of `shape` together (default: every parameter). */
export function parameterCount(shape: SideNetworkShape, names = parameterNames(shape)): number {
  return names.reduce((sum, n) => sum + parameterSize(shape, n), 0);
}

/**
 * Checks that `tensors` holds every parameter of the side network `shape`
 * describes, each with exactly its shape, nothing else, and only finite values
 * of at most `maxMagnitude` (weights; optimizer moments pass Infinity). Throws
 * ADAPTER_CORRUPT naming the first problem.
 */
export function checkSideNetworkTensors(shape: SideNetworkShape, tensors: Map<string, { shape: number[]; data: Float32Array }>, maxMagnitude = MAX_WEIGHT_MAGNITUDE): void {
  const names = parameterNames(shape);
  const known = new Set(names);
  const extra = [...tensors.keys()].find((n) => !known.has(n));
  if (extra !== undefined) throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter holds a tensor ${extra.slice(0, 40)} that its side network does not have.`);
  for (const name of names) {
    const t = tensors.get(name);
    const want = parameterShape(shape, name);
    if (!t) throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter lacks the tensor ${name}.`);
    if (t.shape.length !== want.length || t.shape.some((x, i) => x !== want[i])) {
      throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter's tensor ${name} has shape ${t.shape.join('x')}, expected ${want.join('x')}.`);
    }
    for (let i = 0; i < t.data.length; i++) {
      if (!(Math.abs(t.data[i]!) <= maxMagnitude)) throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter's tensor ${name} holds NaN, infinite or out-of-range values (at most ${maxMagnitude} in magnitude).`);
    }
  }
}
