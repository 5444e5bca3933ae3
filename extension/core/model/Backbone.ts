import * as fs from 'node:fs';
import * as os from 'node:os';
import { MobiError } from '../MobiError';
import type { BufferPool } from '../job/BufferPool';
import { GgufFile, ggufNumber, ggufString, readGgufFileAsync } from './gguf/GgufFile';
import { loadNativeAddon, NativeBackbone, NativeBackboneInfo, NativeTensor } from '../../native/NativeAddon';
import { attentionBlocks, checkSideNetworkTensors } from '../../../common/AdapterConfig';
import { decodeAdapter, maxAdapterBytesFor } from '../../../common/AdapterFile';
import { readAdapterFile } from '../store/readAdapterFile';
import { modelFingerprint } from './modelFingerprint';
import { describeHead, HeadDescription } from './headDescription';


/** llama.cpp `general.file_type` names (llama.h, enum llama_ftype). */
export const FILE_TYPE_NAMES: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 7: 'Q8_0', 8: 'Q5_0', 9: 'Q5_1', 10: 'Q2_K', 11: 'Q3_K_S',
  12: 'Q3_K_M', 13: 'Q3_K_L', 14: 'Q4_K_S', 15: 'Q4_K_M', 16: 'Q5_K_S', 17: 'Q5_K_M', 18: 'Q6_K', 32: 'BF16',
};

export interface ModelInfo {
  path: string;
  architecture: string;
  layers: number;
  hiddenSize: number;
  /** The backbone's attention heads (the output head is `headTensor`). */
  attentionHeads: number;
  /** Its key/value attention heads (grouped-query attention). */
  kvAttentionHeads: number;
  vocabularySize: number;
  trainingContext: number;
  quantization: string;
  fileSizeBytes: number;
  parameters: number;
  /** Name of the head tensor: `output.weight`, or `token_embd.weight` for tied embeddings. */
  headTensor: string;
  /** Final norm epsilon from the GGUF metadata. */
  normEpsilon: number;
  /** What the model does after its last layer (headDescription.ts). */
  head: HeadDescription;
  addsBos: boolean;
}

/** Options of Backbone.open. */
export interface BackboneOptions {
  /** Most tokens one forward pass holds (all sequences together). Default 2048. */
  contextSize?: number;
  /**
   * Most tokens per llama.cpp decode call; longer inputs run in chunks. It
   * bounds llama.cpp's output buffer (tokens x vocabulary floats, zero-filled).
   * Default 128.
   */
  batchTokens?: number;
  /** Most sequences in one forward pass. Default 8. */
  maxSequences?: number;
  /** CPU threads. Default: cores - 1 (at least 1). */
  threads?: number;
  /**
   * Use llama.cpp's flash attention (its default, "auto"). Faster on long
   * sequences; rounds attention inputs to f16 on the CPU (~1e-3). Default true.
   */
  flashAttention?: boolean;
  /** Called with download progress when the model is a Hugging Face URI. */
  onDownloadProgress?: (downloadedBytes: number, totalBytes: number) => void;
}

/** Activations of one forward pass: one [tokens][hiddenSize] block per captured layer. */
export interface Capture {
  layers: number[];
  /** Sequence lengths, in the order given. */
  lengths: number[];
  hiddenSize: number;
  /** data[k] is layer layers[k], sequences concatenated: [sum(lengths)][hiddenSize]. */
  data: Float32Array[];
  /** Seconds llama.cpp spent on the forward pass (worker thread; excludes waiting for the event loop). */
  forwardSeconds: number;
}

/** A view of one sequence of one captured layer, without copying: [length][hiddenSize]. */
export function captureView(capture: Capture, layerSlot: number, sequence: number): Float32Array {
  let start = 0;
  for (let s = 0; s < sequence; s++) start += capture.lengths[s]!;
  const d = capture.hiddenSize;
  return capture.data[layerSlot]!.subarray(start * d, (start + capture.lengths[sequence]!) * d);
}

/** Resolves a model spec (a path, or `hf:owner/repo:quant` / an https URL) to a local file. */
export async function resolveModelPath(spec: string, onProgress?: (done: number, total: number) => void): Promise<string> {
  if (spec.startsWith('hf:') || spec.startsWith('https://')) {
    const { resolveModelFile } = await import('node-llama-cpp');
    try {
      return await resolveModelFile(spec, {
        cli: false,
        onProgress: onProgress ? ({ downloadedSize, totalSize }) => onProgress(downloadedSize, totalSize) : undefined,
      });
    } catch (err) {
      throw new MobiError('MODEL_NOT_FOUND', `Could not resolve or download the model "${spec}" (network or name problem).`, { cause: err });
    }
  }
  if (!fs.existsSync(spec)) throw new MobiError('MODEL_NOT_FOUND', `The model file ${spec} does not exist: check the path.`);
  return spec;
}

/** Validates a GGUF file's header and describes the model, without loading weights. */
export function describeModel(file: GgufFile): Omit<ModelInfo, 'parameters' | 'addsBos'> {
  const arch = ggufString(file, 'general.architecture');
  if (arch === undefined) throw new MobiError('NOT_GGUF', `${file.path} has no general.architecture: not a model file.`);
  const head = describeHead(file, arch);
  const num = (key: string): number => {
    const v = ggufNumber(file, `${arch}.${key}`);
    if (v === undefined) throw new MobiError('NOT_GGUF', `${file.path} lacks ${arch}.${key}.`);
    return v;
  };
  const tokens = file.kv.get('tokenizer.ggml.tokens')?.value;
  const fileType = ggufNumber(file, 'general.file_type');
  const attentionHeads = num('attention.head_count');
  return {
    path: file.path,
    architecture: arch,
    layers: num('block_count'),
    hiddenSize: num('embedding_length'),
    attentionHeads,
    kvAttentionHeads: ggufNumber(file, `${arch}.attention.head_count_kv`) ?? attentionHeads,
    vocabularySize: Array.isArray(tokens) ? tokens.length : 0,
    trainingContext: num('context_length'),
    quantization: fileType !== undefined ? (FILE_TYPE_NAMES[fileType] ?? `type ${fileType}`) : 'unknown',
    fileSizeBytes: file.fileSize,
    headTensor: head.tensor,
    normEpsilon: head.epsilon,
    head,
  };
}

export function defaultThreads(): number {
  return Math.max(1, os.availableParallelism() - 1);
}

/**
 * The frozen backbone on the device: a GGUF model in llama.cpp, forward passes
 * only, with per-layer capture. Owns its native model and context; dispose()
 * once. Calls are serialised: one forward pass at a time.
 */
export class Backbone {
  private queue: Promise<unknown> = Promise.resolve();
  /** The tokens sequence 0 holds in the context after the last generation step (empty after any other forward pass). */
  private held = new Int32Array(0);

  private constructor(
    private readonly native: NativeBackbone,
    readonly info: ModelInfo,
    readonly contextSize: number,
    readonly maxSequences: number,
    readonly nativeInfo: NativeBackboneInfo,
  ) {}

  static async open(spec: string, options: BackboneOptions = {}): Promise<Backbone> {
    const modelPath = await resolveModelPath(spec, options.onDownloadProgress);
    const described = describeModel(await readGgufFileAsync(modelPath));
    const addon = await loadNativeAddon();
    const native = new addon.Backbone();
    const contextSize = options.contextSize ?? 2048;
    const maxSequences = options.maxSequences ?? 8;
    try {
      await native.load(modelPath, { contextSize, batchTokens: options.batchTokens ?? 128, maxSequences, threads: options.threads ?? defaultThreads(), flashAttention: options.flashAttention ?? true });
    } catch (err) {
      native.dispose();
      throw MobiError.from(err);
    }
    const n = native.info();
    return new Backbone(native, { ...described, parameters: n.nParams, addsBos: n.addBos, vocabularySize: n.nVocab }, n.contextSize, maxSequences, n);
  }

  get disposed(): boolean {
    return this.native.disposed;
  }

  /** Token ids exactly as the model's tokenizer gives them (with BOS when the model adds one). */
  tokenize(text: string, addSpecial = true): Int32Array {
    try {
      return this.native.tokenize(text, addSpecial);
    } catch (err) {
      throw MobiError.from(err);
    }
  }

  /** The bytes a token renders to. */
  tokenBytes(token: number): Buffer {
    try {
      return this.native.tokenPiece(token);
    } catch (err) {
      throw MobiError.from(err);
    }
  }

  /** Resolves 'all' or a list to sorted, validated layer indices. */
  resolveLayers(layers: number[] | 'all'): number[] {
    const L = this.info.layers;
    const list = layers === 'all' ? Array.from({ length: L }, (_, i) => i) : [...new Set(layers)].sort((a, b) => a - b);
    if (list.length === 0) throw new MobiError('BAD_ARGUMENT', 'Choose at least one layer to capture.');
    for (const l of list) {
      if (!Number.isInteger(l) || l < 0 || l >= L) {
        throw new MobiError('LAYER_OUT_OF_RANGE', `Layer ${l} does not exist: the model has layers 0..${L - 1}.`);
      }
    }
    return list;
  }

  /**
   * Runs the backbone over `sequences` (each decoded from position 0, no
   * attention between them) and returns the outputs of `layers` for every
   * token. The graph stops after the last wanted layer (the head is skipped).
   * Never blocks the event loop: the forward pass runs on a worker thread.
   * `pool`: where the layers' arrays come from (a job's batches give them back
   * and reuse them instead of leaving tens of MB to the garbage collector
   * each); a new one holds the whole context, so every later batch fits it.
   */
  capture(sequences: Int32Array[], layers: number[] | 'all', pool?: BufferPool): Promise<Capture> {
    const run = async (): Promise<Capture> => {
      if (this.native.disposed) throw new MobiError('DISPOSED', 'The model was disposed; load it again to use it.');
      this.held = new Int32Array(0); // a capture clears the context
      const list = this.resolveLayers(layers);
      if (sequences.length === 0 || sequences.some((s) => s.length === 0)) {
        throw new MobiError('EMPTY_INPUT', 'There is nothing to run: a sequence has no tokens.');
      }
      if (sequences.length > this.maxSequences) {
        throw new MobiError('BAD_ARGUMENT', `At most ${this.maxSequences} sequences fit one forward pass; got ${sequences.length}.`);
      }
      const total = sequences.reduce((a, s) => a + s.length, 0);
      if (total > this.contextSize) {
        throw new MobiError('CONTEXT_OVERFLOW', `The input has ${total} tokens but the context holds ${this.contextSize}; shorten it or raise the context size.`);
      }
      const d = this.info.hiddenSize;
      const data = list.map(() => (pool ? pool.takeFloats(total * d, this.contextSize * d) : new Float32Array(total * d)));
      let forwardSeconds: number;
      try {
        forwardSeconds = await this.native.capture(sequences, Int32Array.from(list), data, true);
      } catch (err) {
        throw MobiError.from(err);
      }
      return { layers: list, lengths: sequences.map((s) => s.length), hiddenSize: d, data, forwardSeconds };
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private serial<T>(run: () => Promise<T>): Promise<T> {
    const wrapped = async (): Promise<T> => {
      if (this.native.disposed) throw new MobiError('DISPOSED', 'The model was disposed; load it again to use it.');
      try {
        return await run();
      } catch (err) {
        throw MobiError.from(err);
      }
    };
    const result = this.queue.then(wrapped, wrapped);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** sha256 of the model file. */
  fingerprint(): Promise<string> {
    return modelFingerprint(this.info.path);
  }

  /** useAdapter of the adapter file at `file`, read with the bound of this model's largest adapter (readAdapterFile). */
  async useAdapterFile(file: string): Promise<{ steps: number; meta: Record<string, unknown> }> {
    return this.useAdapter(await readAdapterFile(file, maxAdapterBytesFor(this.info)));
  }

  /**
   * Loads an adapter file (verified: checksum, format version, and that it was
   * trained for this very model file) and runs its side network inside every
   * later forward pass. On any error the backbone keeps working as before.
   */
  async useAdapter(file: Uint8Array): Promise<{ steps: number; meta: Record<string, unknown> }> {
    const fp = await this.fingerprint();
    let contents;
    try {
      contents = decodeAdapter(file, fp);
    } catch (err) {
      throw MobiError.from(err);
    }
    const { shape, adapterNormEpsilon, gateTemperature } = contents.header.config;
    try {
      checkSideNetworkTensors(shape, contents.tensors);
    } catch (err) {
      throw MobiError.from(err);
    }
    const headMismatch = (shape.headRank ?? 0) > 0 && shape.vocab !== this.info.vocabularySize;
    if (shape.d !== this.info.hiddenSize || shape.tappedLayers[shape.tappedLayers.length - 1] !== this.info.layers - 1 || headMismatch) {
      throw new MobiError('ADAPTER_MODEL_MISMATCH', "The adapter's shape does not fit this model.");
    }
    const tensors: Record<string, Float32Array> = {};
    for (const [name, t] of contents.tensors) tensors[name] = t.data;
    await this.serial(async () => {
      this.native.setAdapter({ ...shape, attentionBlocks: attentionBlocks(shape), adapterEps: adapterNormEpsilon, gateTemperature, logitMultiplier: this.info.head.logitMultiplier, tensors });
      this.held = new Int32Array(0); // what the cache holds came from the other network
    });
    return { steps: Number(contents.header.meta.steps ?? 0), meta: contents.header.meta };
  }

  /** Back to the plain backbone. */
  clearAdapter(): Promise<void> {
    return this.serial(async () => {
      this.native.clearAdapter();
      this.held = new Int32Array(0);
    });
  }

  /** Sum of next-token losses and their count over sequences (each predicts tokens 1..n-1). */
  sequenceLoss(sequences: Int32Array[]): Promise<{ lossSum: number; tokens: number }> {
    const inputs = sequences.filter((s) => s.length >= 2);
    if (inputs.length === 0) return Promise.reject(new MobiError('EMPTY_INPUT', 'No sequence has two tokens or more.'));
    return this.serial(() => {
      this.held = new Int32Array(0); // a loss pass clears the context
      return this.native.lossOf(inputs.map((s) => s.subarray(0, s.length - 1)), inputs.map((s) => s.subarray(1)));
    });
  }

  /**
   * Logits after `tokens`, placed at `startPos` in sequence 0 (0 starts
   * afresh; otherwise what the context held from `startPos` on is dropped
   * first, so a prompt that shares a prefix with the last one reuses its
   * cache). `signal` cancels it, within one decode chunk, with CANCELLED.
   */
  logitsAfter(tokens: Int32Array, startPos: number, signal?: AbortSignal): Promise<Float32Array> {
    return this.serial(async () => {
      if (signal?.aborted) throw new MobiError('CANCELLED', 'The request was superseded.');
      const cancel = (): void => this.native.cancel();
      signal?.addEventListener('abort', cancel, { once: true });
      try {
        const logits = await this.native.logitsAfter(tokens, startPos);
        const held = new Int32Array(startPos + tokens.length);
        held.set(this.held.subarray(0, startPos));
        held.set(tokens, startPos);
        this.held = held;
        return logits;
      } catch (err) {
        this.held = this.held.subarray(0, Math.min(startPos, this.held.length)); // what is left is only the part before startPos
        throw err;
      } finally {
        signal?.removeEventListener('abort', cancel);
      }
    });
  }

  /**
   * How many leading tokens of `tokens` the context already holds from the
   * last generation (at most all but the last, whose logits are needed).
   */
  reusablePrefix(tokens: Int32Array): number {
    const max = Math.min(this.held.length, tokens.length - 1);
    let p = 0;
    while (p < max && this.held[p] === tokens[p]) p++;
    return p;
  }

  /** A tensor of the model file as float32 (dequantized by ggml), optionally a range of rows. */
  readTensor(name: string, rowStart?: number, rowCount?: number): Promise<NativeTensor> {
    return readModelTensor(this.info.path, name, rowStart, rowCount);
  }

  dispose(): void {
    this.native.dispose();
  }
}

/** Reads a tensor of a GGUF file as float32 with ggml's own dequantization, off the JavaScript thread. */
export async function readModelTensor(modelPath: string, name: string, rowStart?: number, rowCount?: number): Promise<NativeTensor> {
  const addon = await loadNativeAddon();
  try {
    return await addon.readTensorAsync(modelPath, name, rowStart, rowCount);
  } catch (err) {
    throw MobiError.from(err);
  }
}
