import * as fs from 'node:fs';
import type { SideNetworkShape } from '../../common/AdapterConfig';
import { packageRoot } from '../../common/packageRoot';
import { addonDir, addonFile, NATIVE_TARGET_NAMES, targetOf } from './targets';

/**
 * Every error code the addon raises (the C++ sources' codedError calls; a unit
 * test reads them and fails on a code missing here), plus the loader's own.
 * The device core turns them into its errors with the same code.
 */
export const NATIVE_ERROR_CODES = [
  'NATIVE_ADDON_MISSING', 'NO_BACKEND', 'MODEL_LOAD_FAILED', 'CONTEXT_FAILED', 'ALREADY_LOADED', 'DISPOSED', 'NOT_LOADED', 'BUSY',
  'TOKENIZE_FAILED', 'BAD_TOKEN', 'EMPTY_INPUT', 'CONTEXT_OVERFLOW', 'LAYER_OUT_OF_RANGE', 'BAD_ARGUMENT', 'DECODE_FAILED', 'CAPTURE_FAILED',
  'CANCELLED', 'NOT_GGUF', 'TRUNCATED_GGUF', 'NO_SUCH_TENSOR', 'UNSUPPORTED_TYPE', 'ADAPTER_CORRUPT', 'ADAPTER_MODEL_MISMATCH', 'IO_ERROR',
] as const;
export type NativeErrorCode = (typeof NATIVE_ERROR_CODES)[number];

/** An error of the native layer, with one of NATIVE_ERROR_CODES. */
export class NativeError extends Error {
  constructor(readonly code: NativeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NativeError';
  }
}

/** The native addon as seen from TypeScript (extension/native/addon.cpp). */
export interface NativeBackboneInfo {
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  nCtxTrain: number;
  nVocab: number;
  nParams: number;
  sizeBytes: number;
  description: string;
  addBos: boolean;
  bos: number;
  eos: number;
  /** Fill-in-the-middle tokens (prefix, suffix, middle), -1 when the model has none. */
  fimPre: number;
  fimSuf: number;
  fimMid: number;
  contextSize: number;
  batchTokens: number;
  maxSequences: number;
}

export interface NativeLoadOptions {
  contextSize: number;
  /** Most tokens per llama_decode call (a capture runs in chunks of this size). */
  batchTokens: number;
  maxSequences: number;
  threads: number;
  /** llama.cpp's flash attention ("auto"); faster, but rounds to f16 on the CPU. */
  flashAttention: boolean;
}

export interface NativeBackbone {
  load(modelPath: string, options: NativeLoadOptions): Promise<void>;
  info(): NativeBackboneInfo;
  tokenize(text: string, addSpecial: boolean): Int32Array;
  tokenPiece(token: number): Buffer;
  /** outputs[k] receives layers[k] as [sum of sequence lengths][nEmbd]. Resolves with the decode's seconds on the worker thread. */
  capture(sequences: Int32Array[], layers: Int32Array, outputs: Float32Array[], stopEarly: boolean): Promise<number>;
  /** Next-token cross-entropy of every token (side network included when set). */
  lossOf(sequences: Int32Array[], targets: Int32Array[]): Promise<{ lossSum: number; tokens: number; seconds: number }>;
  /** Continues sequence 0 at startPos (0 = afresh); resolves with the last token's logits. */
  /** Continues sequence 0 at startPos (0 = afresh; otherwise what it held from startPos on is dropped first); resolves with the last token's logits. */
  logitsAfter(tokens: Int32Array, startPos: number): Promise<Float32Array>;
  /** Stops the decode in flight between two chunks (it rejects with CANCELLED). */
  cancel(): void;
  /** Runs this side network inside every later forward pass (not in captures). */
  setAdapter(adapter: NativeAdapter): void;
  clearAdapter(): void;
  dispose(): void;
  readonly disposed: boolean;
}

/** A side network for the native loader: its shape and constants come from the adapter's AdapterConfig. */
export interface NativeAdapter extends SideNetworkShape {
  /** Blocks 0..attentionBlocks-1 have self-attention (common/AdapterConfig.ts attentionBlocks(); the reader does not derive it). */
  attentionBlocks: number;
  adapterEps: number;
  gateTemperature: number;
  /** The model's logit multiplier (headDescription.ts); default 1. */
  logitMultiplier?: number;
  /** down.k [d][r], alpha.k [1], mid.k [r][b], up.k [b][r], out [r][d]; wq.k, wk.k, wv.k, wo.k [r][r] for each attention block; head_a [d][headRank], head_b [vocab][headRank] with a head update */
  tensors: Record<string, Float32Array>;
}

export interface NativeTensor {
  /** ggml order: shape[0] is the row length. */
  shape: number[];
  type: string;
  data: Float32Array;
}

/** How the head's gradient product over the vocabulary is cut short (HeadLoss.hpp); the defaults serve every model. */
export interface HeadTuning {
  /** The most probability a token's sparse product may leave out (spread as the head's mean row). Default 1e-4. */
  tailMass?: number;
  /** Rows kept for a sparse product: logit at least the token's largest minus this. Default 18. */
  tailNats?: number;
  /** Rows kept per token before it takes the dense product; 0: always dense. Default vocabulary / 64 within [256, 4096]. */
  maxCandidates?: number;
  /** Two passes over a small vocabulary: the second reads the first's logits instead of computing them again. Default true (off: the baseline of bench:head). */
  keepLogits?: boolean;
}

/** The model's own head on the device (HeadLoss.cpp): loss and its gradient for label-private training. */
export interface NativeHeadLoss {
  /** `mapped`: the head is read through a mapping of the model file (no copy held). */
  load(): Promise<{ vocabularySize: number; hiddenSize: number; type: string; mapped: boolean }>;
  /**
   * Per-token losses of hidden states y [n][d] (before the final norm) and each token's highest-scoring id (`top`); with
   * wantGrad, d(sum weights * loss)/dy; `denseTokens`: how many took the dense product.
   */
  run(y: Float32Array, targets: Int32Array, weights: Float32Array, wantGrad: boolean, rows?: RowRequest): Promise<HeadRun>;
  /** The head update (label-private): logits W z + B (A^T z); A [d][rank], B [vocab][rank] (zero when not given), and Adam's moments (zero when not given). Rank 0: none. */
  setHeadUpdate(rank: number, a?: Float32Array, b?: Float32Array, moments?: HeadUpdateMoments): void;
  /** One clipped Adam step of A and B from the last run's gradient (not taken, `stepped` false, when it is not finite). */
  stepHeadUpdate(step: HeadStep): Promise<{ stepped: boolean; gradNorm: number }>;
  exportHeadUpdate(withMoments?: boolean): { rank: number; a: Float32Array; b: Float32Array } & Partial<HeadUpdateMoments>;
  /** The head update with its moments written to `path` on a worker thread (job id, step and shape in its header, a checksum at its end). */
  saveHeadUpdate(path: string, jobId: string, step: number, rank: number): Promise<void>;
  /** Reads what saveHeadUpdate wrote, checking job id, step, shape and checksum (BAD_ARGUMENT when they do not match). */
  loadHeadUpdate(path: string, jobId: string, step: number, rank: number): Promise<void>;
  dispose(): void;
}

/**
 * Candidate rows (HeadRows.cpp), for a label-private job's later epochs; row lists are ascending without repeats.
 *   within: the run takes the softmax over these rows only (every target among them);
 *   check: with a whole-vocabulary run, the probability each token's softmax puts outside these rows (leftOutMax, leftOutMean);
 *   collect: with a whole-vocabulary gradient, per segment (consecutive tokens, `segments` their counts; none: one of
 *     all tokens) its tokens' kept rows and targets, ascending without repeats (a segment with a token that took the
 *     dense product is flagged instead).
 */
export interface RowRequest {
  within?: Int32Array;
  check?: Int32Array;
  collect?: boolean;
  segments?: Int32Array;
}

/** One run of the head: see NativeHeadLoss.run and RowRequest. */
export interface HeadRun {
  losses: Float32Array;
  top: Int32Array;
  grad?: Float32Array;
  denseTokens: number;
  leftOutMax?: number;
  leftOutMean?: number;
  /** Segment s's rows are ids[offsets[s] .. offsets[s + 1]); dense[s] = 1 where a token of it took the dense product (none listed). */
  rows?: { offsets: Int32Array; ids: Int32Array; dense: Uint8Array };
}

/** Adam's moments of the head update's A and B. */
export interface HeadUpdateMoments {
  ma: Float32Array;
  va: Float32Array;
  mb: Float32Array;
  vb: Float32Array;
}

/** A step of the head update: the side network's learning rate at this step, t counting from 1, and its constants. */
export interface HeadStep {
  learningRate: number;
  t: number;
  clipNorm: number;
  beta1: number;
  beta2: number;
  epsilon: number;
}

export interface NativeAddon {
  Backbone: new () => NativeBackbone;
  /** `head`: the head's matrix (default: output.weight, else token_embd.weight), a factor on the final norm's weight (default 1) and the logits' soft cap (default 0: none; headDescription.ts). */
  HeadLoss: new (modelPath: string, normEpsilon: number, threads: number, tuning?: HeadTuning, head?: { tensor: string; normScale: number; softCap?: number; layerNorm?: boolean }) => NativeHeadLoss;
  readTensor(modelPath: string, name: string, rowStart?: number, rowCount?: number): NativeTensor;
  /** readTensor on a worker of libuv's pool: the JavaScript thread is free while the file is read and dequantized. */
  readTensorAsync(modelPath: string, name: string, rowStart?: number, rowCount?: number): Promise<NativeTensor>;
  ensureBackends(libDir: string, verboseLog: boolean): number;
  /** llama.cpp's quantizer (llama_model_quantize) on a worker thread: `input` rewritten to `output` with the tensor types llama.cpp picks for `fileType` (llama_ftype). */
  quantizeModel(input: string, output: string, options: { fileType: number; threads: number }): Promise<void>;
  /** Constants the C++ side shares with TypeScript (a unit test holds them equal). */
  constants: { ropeBase: number; maxHeadRank: number };
}

/**
 * Where this machine's addon is: out/native/<target>/mobillm.node, beside the
 * llama.cpp libraries it links to (copied there from node-llama-cpp's package
 * for that target by build-addon.js). NATIVE_ADDON_MISSING, naming the
 * platform and the supported ones, on a machine with no build or where it is missing.
 */
export function nativeAddonLocation(platform: string = process.platform, arch: string = process.arch): { file: string; libDir: string } {
  const target = targetOf(platform, arch);
  if (!target) {
    throw new NativeError('NATIVE_ADDON_MISSING', `MobiLLM has no build for ${platform}-${arch}; it runs on ${NATIVE_TARGET_NAMES.join(', ')}.`);
  }
  const file = addonFile(packageRoot(), target);
  if (!fs.existsSync(file)) {
    throw new NativeError('NATIVE_ADDON_MISSING', `The native addon for ${target} is missing (${file}): install the MobiLLM package built for ${target}, or from source run "npm ci" (or "node extension/native/build-addon.js").`);
  }
  return { file, libDir: addonDir(packageRoot(), target) };
}

let loaded: Promise<NativeAddon> | undefined;

/**
 * Loads the addon once per process. It links to the llama.cpp shared libraries
 * node-llama-cpp ships (copied beside it, found through its rpath or the DLL
 * search path) and loads the best of their CPU backends itself, so the
 * extension runs llama.cpp without node-llama-cpp's JavaScript (which only
 * resolves `hf:` model URIs). A library that does not load is
 * NATIVE_ADDON_MISSING too, never a crash.
 */
export function loadNativeAddon(): Promise<NativeAddon> {
  loaded ??= (async () => {
    const where = nativeAddonLocation();
    let addon: NativeAddon;
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = require(where.file) as NativeAddon;
    } catch (err) {
      const why = err instanceof Error ? err.message.split('\n')[0]!.slice(0, 300) : String(err);
      throw new NativeError('NATIVE_ADDON_MISSING', `The native addon for ${process.platform}-${process.arch} does not load (${why}); reinstall the MobiLLM package built for this platform.`, { cause: err });
    }
    // llama.cpp's own log lines go to stderr only when MOBILLM_DEBUG is set:
    // the product reports failures through typed errors instead (NO_BACKEND).
    addon.ensureBackends(where.libDir, Boolean(process.env.MOBILLM_DEBUG));
    return addon;
  })();
  loaded.catch(() => (loaded = undefined));
  return loaded;
}
