import { Bits, isBits } from '../../../common/ActivationQuantizer';
import { defaultStoreDir } from '../defaultStoreDir';
import { OPTION_LIMITS, Range } from '../../../common/limits';
import { MobiError } from '../MobiError';
import type { ScanOptions, ScanReport } from '../scanWorkspace';
import type { JobProgress } from './JobProgress';

/** Options of a fine-tuning job. Every field has a default a newcomer can keep. */
export interface FineTuneOptions {
  /** Folder of source code to learn from. */
  workspace: string;
  /** GGUF path or hf: URI of the backbone. */
  model: string;
  /** Team server; undefined starts an embedded server in this process on 127.0.0.1. */
  server?: { url: string; token: string };
  /** Optimizer steps; default: `epochs` passes over the training sequences. */
  steps?: number;
  /** Passes over the training data when `steps` is not given. Default 1. */
  epochs?: number;
  /** Tokens predicted per sequence. Default 128. */
  seqLen?: number;
  /** Sequences per batch (one optimizer step). Default 4. */
  batchSize?: number;
  /** Activation width on the wire. Default 8. */
  bits?: Bits;
  /** Side width r = d / reduction. Default 8. */
  reduction?: number;
  /** Leave the first k layers untapped (less exposure of early activations). Default 0. */
  skipLayers?: number;
  /** Tap every n-th layer, counting down from the last (always tapped). Default 1 (every layer). */
  tapEvery?: number;
  /** Peak learning rate. Default 2e-3. */
  learningRate?: number;
  /** Seed of the split, shuffles and initial weights. Default 1. */
  seed?: number;
  /** Server checkpoint interval in steps. Default 25. */
  checkpointEvery?: number;
  /** Held-out file fraction. Default 0.1. */
  heldOutFraction?: number;
  /** Cap on held-out sequences. Default 32. */
  maxHeldOutSequences?: number;
  /** Share of training sequences put in fill-in-the-middle order, for models that declare FIM tokens. Default 0.5. */
  fimRate?: number;
  /**
   * Label-private training: no target id leaves the device; the loss is
   * computed here with the model's own head from the server's side output,
   * and only its gradient goes back. Default false.
   */
  labelPrivate?: boolean;
  /**
   * The side network's design: 1 the per-token ladder, 2 with causal
   * self-attention within each sequence (common/AdapterConfig.ts). Default 1.
   */
  sideNetwork?: 1 | 2;
  /**
   * Join the side network's output after the backbone's final norm (QST's
   * form) instead of before it. Standard mode only. Default false.
   */
  joinAfterNorm?: boolean;
  /**
   * Start the side network from a reduced copy of the backbone's weights
   * (computed here, sent with the job; extension/core/job/backboneInit.ts)
   * instead of seeded random values. Default: true for side network 2 (it
   * measured better there; a model whose weights do not fit falls back to
   * random values), false for side network 1.
   */
  initFromBackbone?: boolean;
  /** Workspace scan filters and limits. Default: none beyond the scan's own. */
  scan?: ScanOptions;
  /** Device store (adapters, job records, embedded server data). Default ~/.mobillm. */
  storeDir?: string;
  /** CPU threads for the backbone. Default cores - 1. */
  threads?: number;
  /** Give up reconnecting after this long. Default 120 s. */
  reconnectTimeoutMs?: number;
  /** Continue this job (its record is in the store). Default: a new job. */
  resumeJobId?: string;
  /** Called with the scan report before any work; return false to stop. Default: go ahead. */
  confirm?: (report: ScanReport) => Promise<boolean> | boolean;
  /** Called at every phase change and acknowledged step. Default: nothing. */
  onProgress?: (p: JobProgress) => void;
  /** Sees every frame this device sends, byte for byte (auditing what crosses the wire). Default: nothing. */
  onFrameSent?: (frame: Uint8Array) => void;
  /** Writes one line per event (numbers only, never source text). Default: nothing. */
  log?: (line: string) => void;
  /** Cancels the job. Default: never. */
  signal?: AbortSignal;
  /** How the host names an option in messages (the CLI: its flag). Default: the option's name. */
  describeOption?: (name: TunedOption) => string;
}

/** The settings a job is created with and keeps when it is resumed. */
export const TUNED_OPTIONS = ['epochs', 'steps', 'seqLen', 'batchSize', 'bits', 'reduction', 'skipLayers', 'learningRate', 'seed', 'checkpointEvery', 'heldOutFraction', 'maxHeldOutSequences', 'fimRate', 'labelPrivate', 'sideNetwork', 'tapEvery', 'joinAfterNorm', 'initFromBackbone'] as const;
export type TunedOption = (typeof TUNED_OPTIONS)[number];
export type TunedSettings = Partial<Pick<FineTuneOptions, TunedOption>>;

/** The whole-number options and their ranges (common/limits.ts: the CLI, VS Code and the server share them). */
const INTEGER_RANGES: Partial<Record<TunedOption, Range>> = {
  epochs: OPTION_LIMITS.epochs,
  steps: OPTION_LIMITS.steps,
  seqLen: OPTION_LIMITS.seqLen,
  batchSize: OPTION_LIMITS.batchSize,
  reduction: OPTION_LIMITS.reduction,
  skipLayers: OPTION_LIMITS.skipLayers,
  tapEvery: OPTION_LIMITS.tapEvery,
  seed: OPTION_LIMITS.seed,
  checkpointEvery: { min: 1, max: OPTION_LIMITS.steps.max },
  maxHeldOutSequences: { min: 1, max: 100_000 },
};

/**
 * Checks every setting that is given against its range, once, before any
 * work: BAD_ARGUMENT naming the option (as the host names it) and the range.
 */
export function checkFineTuneOptions(o: FineTuneOptions): void {
  const name = (k: TunedOption): string => o.describeOption?.(k) ?? k;
  const bad = (k: TunedOption, range: string): never => {
    throw new MobiError('BAD_ARGUMENT', `${name(k)} must be ${range} (got ${String(o[k])}).`);
  };
  for (const [k, r] of Object.entries(INTEGER_RANGES) as [TunedOption, Range][]) {
    const v = o[k];
    if (v !== undefined && !(Number.isInteger(v) && (v as number) >= r.min && (v as number) <= r.max)) bad(k, `a whole number from ${r.min} to ${r.max}`);
  }
  const lr = OPTION_LIMITS.learningRate;
  if (o.learningRate !== undefined && !(o.learningRate >= lr.min && o.learningRate <= lr.max)) bad('learningRate', `a number from ${lr.min} to ${lr.max}`);
  if (o.bits !== undefined && !isBits(o.bits)) bad('bits', '4, 8 or 16');
  if (o.heldOutFraction !== undefined && !(o.heldOutFraction > 0 && o.heldOutFraction < 1)) bad('heldOutFraction', 'a fraction between 0 and 1');
  if (o.fimRate !== undefined && !(o.fimRate >= 0 && o.fimRate <= 1)) bad('fimRate', 'a fraction from 0 to 1');
  if (o.labelPrivate !== undefined && typeof o.labelPrivate !== 'boolean') bad('labelPrivate', 'true or false');
  if (o.sideNetwork !== undefined && o.sideNetwork !== 1 && o.sideNetwork !== 2) bad('sideNetwork', '1 or 2');
  if (o.joinAfterNorm !== undefined && typeof o.joinAfterNorm !== 'boolean') bad('joinAfterNorm', 'true or false');
  if (o.initFromBackbone !== undefined && typeof o.initFromBackbone !== 'boolean') bad('initFromBackbone', 'true or false');
  if (o.joinAfterNorm && o.labelPrivate) {
    throw new MobiError('BAD_ARGUMENT', `${name('joinAfterNorm')} is for the standard mode: label-private training joins before the final norm.`);
  }
}

/** The tuned settings of a resolved job (what its record keeps). */
export function tunedSettings(o: FineTuneOptions): TunedSettings {
  return Object.fromEntries(TUNED_OPTIONS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]])) as TunedSettings;
}

/** The options that always have a value once defaults are applied. */
type Defaulted = 'epochs' | 'seqLen' | 'batchSize' | 'bits' | 'reduction' | 'skipLayers' | 'learningRate' | 'seed' | 'checkpointEvery'
  | 'heldOutFraction' | 'maxHeldOutSequences' | 'fimRate' | 'labelPrivate' | 'sideNetwork' | 'tapEvery' | 'scan' | 'storeDir' | 'reconnectTimeoutMs';
export type ResolvedFineTuneOptions = FineTuneOptions & Required<Pick<FineTuneOptions, Defaulted>>;

/** The defaults of FineTuneOptions (the store folder is read from the environment when options are resolved). */
export const FINE_TUNE_DEFAULTS = {
  epochs: 1, seqLen: 128, batchSize: 4, bits: 8, reduction: 8, skipLayers: 0, learningRate: 2e-3, seed: 1, checkpointEvery: 25,
  heldOutFraction: 0.1, maxHeldOutSequences: 32, fimRate: 0.5, labelPrivate: false, sideNetwork: 1, tapEvery: 1, reconnectTimeoutMs: 120_000,
} as const satisfies Omit<Required<Pick<FineTuneOptions, Defaulted>>, 'scan' | 'storeDir'>;

/** Checks the options and applies the defaults to every one left undefined. */
export function resolveFineTuneOptions(options: FineTuneOptions): ResolvedFineTuneOptions {
  checkFineTuneOptions(options);
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as FineTuneOptions;
  return { ...FINE_TUNE_DEFAULTS, scan: {}, storeDir: defaultStoreDir(), ...given };
}
