import * as fs from 'node:fs';
import * as path from 'node:path';
import { MobiError } from '../MobiError';
import { SeededRandom } from '../../../common/SeededRandom';
import { GgufValueType, readGgufFile } from './gguf/GgufFile';
import { GgufWriter } from './gguf/GgufWriter';
import { GGML_TYPE_BY_NAME, GgmlType, GgmlTypeName, encodeTensor, fileTypeOf, QK } from './gguf/ggmlTypes';

/** Options of the built-in tiny model generator. */
export interface TinyModelOptions {
  /** Output file. */
  out: string;
  /** The graph llama.cpp builds for it (TINY_ARCHITECTURES). Default llama. */
  architecture?: TinyArchitecture;
  /** PRNG seed for the weights. Default 1. */
  seed?: number;
  /** Transformer blocks. Default 4. */
  layers?: number;
  /** Hidden size d. Default 64. Must be a multiple of 32 for q8_0/q4_0. */
  embd?: number;
  /** Attention heads. Default 4. */
  heads?: number;
  /** Key/value heads (GQA when fewer than heads). Default 2. */
  kvHeads?: number;
  /** Feed-forward width. Default 3 * embd, rounded to 32. */
  ff?: number;
  /** Type of the matrices (norms stay f32). Default f32. */
  type?: GgmlTypeName;
  /** Take the tokenizer from this vocabulary-only (or full) GGUF instead of the built-in SPM one. */
  vocab?: string;
  /** Training context length written to the metadata. Default 2048. */
  contextLength?: number;
  /** Write a separate `output.weight` head; when false the head is tied to `token_embd.weight`. Default true. */
  untiedHead?: boolean;
  /** Add fill-in-the-middle control tokens (`<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>`) to the built-in vocabulary and declare them in the metadata. Default false. */
  fim?: boolean;
  /** The weights of each tensor by its GGUF name (row-major, as many as the tensor holds), instead of seeded random ones: a trained model written in this layout. Default: random. */
  values?: (name: string) => Float32Array;
}

/**
 * What a generated model of each architecture holds beyond llama's tensors,
 * as the pinned llama.cpp's src/models/<architecture>.cpp loads them.
 */
interface ArchitectureLayout {
  /** One attn_qkv matrix instead of attn_q, attn_k and attn_v (phi3). */
  fusedQkv?: boolean;
  /** ffn_up holds the gate's rows then the up rows; no ffn_gate (phi3). */
  fusedGateUp?: boolean;
  /** attn_q_norm and attn_k_norm over each head (qwen3, gemma3). */
  qkNorm?: boolean;
  /** post_attention_norm and post_ffw_norm (gemma2, gemma3). */
  postNorms?: boolean;
  /** The head is always the embedding: no output.weight is written (gemma, gemma2). */
  alwaysTied?: boolean;
  /** Metadata the architecture needs beyond the common keys, with values a small model can use. */
  extraKv?: Record<string, number>;
  /** LayerNorms with biases (attn_norm, ffn_norm, output_norm), biases on the attention output and the feed-forward, no ffn_gate (starcoder2). */
  layerNorms?: boolean;
}

const TINY_LAYOUTS = {
  llama: {},
  qwen2: {},
  qwen3: { qkNorm: true },
  phi3: { fusedQkv: true, fusedGateUp: true },
  gemma: { alwaysTied: true },
  // A cap the generated logits reach (gemma2's real files have 30 over far wider logits).
  gemma2: { alwaysTied: true, postNorms: true, extraKv: { final_logit_softcapping: 3 } },
  gemma3: { qkNorm: true, postNorms: true },
  granite: { extraKv: { logit_scale: 4, residual_scale: 0.5, embedding_scale: 2 } },
  starcoder2: { layerNorms: true },
} satisfies Record<string, ArchitectureLayout>;

/** Architectures the generator writes. */
export type TinyArchitecture = keyof typeof TINY_LAYOUTS;
export const TINY_ARCHITECTURES = Object.keys(TINY_LAYOUTS) as TinyArchitecture[];

/** The fill-in-the-middle control tokens the generator can add, in the order prefix, suffix, middle. */
export const TINY_FIM_TOKENS = ['<|fim_prefix|>', '<|fim_suffix|>', '<|fim_middle|>'] as const;

/** Pieces of the built-in SPM vocabulary beyond single characters and bytes: common code fragments. */
const CODE_WORDS = [
  'function', 'return', 'const', 'let', 'var', 'if', 'else', 'for', 'while', 'import', 'export', 'from',
  'class', 'interface', 'type', 'extends', 'implements', 'new', 'this', 'async', 'await', 'true', 'false',
  'null', 'undefined', 'string', 'number', 'boolean', 'void', 'public', 'private', 'readonly', 'static',
  'throw', 'Error', 'try', 'catch', 'finally', 'switch', 'case', 'break', 'default', 'continue', 'of', 'in',
  'length', 'push', 'map', 'filter', 'value', 'name', 'index', 'result', 'options', 'error', 'message',
  'data', 'path', 'file', 'size', 'count', 'token', 'model', 'layer', 'server', 'device', 'test', 'assert',
  'equal', 'describe', 'it', 'expect', 'console', 'log', 'Promise', 'Array', 'Map', 'Set', 'Buffer',
  'def', 'self', 'None', 'print', 'int', 'str', 'float', 'struct', 'include', 'std', 'auto', 'size_t',
];
/** Multi-character symbols common in code. */
const CODE_SYMBOLS = ['  ', '    ', '\n\n', '=>', '===', '!==', '==', '!=', '<=', '>=', '&&', '||', '++', '--', '+=', '();', '()', '{}', '[]', '});', '//', '/*', '*/', '::', '->'];

export const SPM_SPACE = '\u2581';

/** The built-in SPM vocabulary: control tokens, 256 byte tokens, printable ASCII, code fragments (with every prefix, so SPM merges can reach them). */
export function builtInVocabulary(): { tokens: string[]; scores: number[]; types: number[] } {
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  const types: number[] = [2, 3, 3];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6);
  }
  const seen = new Set(tokens);
  const pieces: string[] = [];
  const add = (p: string): void => {
    if (!seen.has(p)) {
      seen.add(p);
      pieces.push(p);
    }
  };
  add(SPM_SPACE);
  add('\n');
  add('\t');
  for (let c = 33; c < 127; c++) add(String.fromCharCode(c));
  for (const sym of CODE_SYMBOLS) {
    const s = sym.replace(/ /g, SPM_SPACE);
    for (let k = 2; k <= s.length; k++) add(s.slice(0, k));
  }
  for (const word of CODE_WORDS) {
    for (const w of [word, SPM_SPACE + word]) {
      for (let k = 2; k <= w.length; k++) add(w.slice(0, k));
    }
  }
  const scores = tokens.map(() => 0);
  for (const p of pieces) {
    tokens.push(p);
    types.push(1);
    // SPM merges the adjacent pair whose union has the highest score: prefer longer pieces.
    scores.push(p.length - tokens.length * 1e-6);
  }
  return { tokens, scores, types };
}

/**
 * Writes a valid GGUF v3 model with random weights (seeded), `llama` unless
 * `architecture` says otherwise. It is the product's built-in default
 * backbone for the demo and the tests.
 */
export function writeTinyModel(options: TinyModelOptions): void {
  const arch = options.architecture ?? 'llama';
  const layout: ArchitectureLayout = TINY_LAYOUTS[arch];
  if (layout === undefined) throw new MobiError('BAD_ARGUMENT', `The generator writes ${TINY_ARCHITECTURES.join(', ')}, not ${String(arch)}.`);
  const seed = options.seed ?? 1;
  const nLayer = options.layers ?? 4;
  const d = options.embd ?? 64;
  const nHead = options.heads ?? 4;
  const nKv = options.kvHeads ?? Math.max(1, nHead / 2);
  const ff = options.ff ?? Math.ceil((3 * d) / QK) * QK;
  const typeName = options.type ?? 'f32';
  const type = GGML_TYPE_BY_NAME[typeName];
  if (type === undefined) throw new MobiError('BAD_ARGUMENT', `Unknown tensor type ${typeName}; use f32, f16, q8_0 or q4_0.`);
  if (!Number.isInteger(nLayer) || nLayer < 1) throw new MobiError('BAD_ARGUMENT', 'layers must be a positive integer.');
  if (d % nHead !== 0 || nHead % nKv !== 0) throw new MobiError('BAD_ARGUMENT', 'embd must divide by heads, and heads by kvHeads.');
  if ((d / nHead) % 2 !== 0) throw new MobiError('BAD_ARGUMENT', 'The head size (embd / heads) must be even for RoPE.');
  if (type !== GgmlType.F32 && type !== GgmlType.F16 && (d % QK !== 0 || ff % QK !== 0)) {
    throw new MobiError('BAD_ARGUMENT', `embd and ff must be multiples of ${QK} for ${typeName}.`);
  }
  const headDim = d / nHead;
  const w = new GgufWriter();
  w.string('general.architecture', arch);
  // The name never says the architecture: llama.cpp's vocabulary loader looks for a real phi-3's tokens when its name says phi3.
  w.string('general.name', `mobillm-tiny-${nLayer}x${d}-s${seed}`);
  w.u32('general.file_type', fileTypeOf(type));
  w.u32(`${arch}.context_length`, options.contextLength ?? 2048);
  w.u32(`${arch}.embedding_length`, d);
  w.u32(`${arch}.block_count`, nLayer);
  w.u32(`${arch}.feed_forward_length`, ff);
  w.u32(`${arch}.attention.head_count`, nHead);
  w.u32(`${arch}.attention.head_count_kv`, nKv);
  w.u32(`${arch}.rope.dimension_count`, headDim);
  w.f32(`${arch}.rope.freq_base`, 10000);
  w.f32(`${arch}.attention.${layout.layerNorms ? 'layer_norm_epsilon' : 'layer_norm_rms_epsilon'}`, 1e-5);
  for (const [key, value] of Object.entries(layout.extraKv ?? {})) w.f32(`${arch}.${key}`, value);

  let nVocab: number;
  if (options.vocab !== undefined) {
    const src = readGgufFile(options.vocab);
    const tokens = src.kv.get('tokenizer.ggml.tokens');
    if (tokens === undefined) throw new MobiError('BAD_ARGUMENT', `${options.vocab} has no tokenizer.`);
    for (const [key, entry] of src.kv) if (key.startsWith('tokenizer.')) w.set(key, entry);
    nVocab = (tokens.value as unknown[]).length;
  } else {
    const v = builtInVocabulary();
    if (options.fim) {
      const first = v.tokens.length;
      for (const t of TINY_FIM_TOKENS) {
        v.tokens.push(t);
        v.scores.push(0);
        v.types.push(3); // control
      }
      w.u32('tokenizer.ggml.fim_pre_token_id', first);
      w.u32('tokenizer.ggml.fim_suf_token_id', first + 1);
      w.u32('tokenizer.ggml.fim_mid_token_id', first + 2);
    }
    w.string('tokenizer.ggml.model', 'llama');
    w.array('tokenizer.ggml.tokens', GgufValueType.STRING, v.tokens);
    w.array('tokenizer.ggml.scores', GgufValueType.FLOAT32, v.scores);
    w.array('tokenizer.ggml.token_type', GgufValueType.INT32, v.types);
    w.u32('tokenizer.ggml.unknown_token_id', 0);
    w.u32('tokenizer.ggml.bos_token_id', 1);
    w.u32('tokenizer.ggml.eos_token_id', 2);
    w.bool('tokenizer.ggml.add_bos_token', true);
    w.bool('tokenizer.ggml.add_space_prefix', false);
    nVocab = v.tokens.length;
  }

  // One PRNG per tensor, seeded from (seed, tensor index): tensors are
  // independent of generation order and of each other's types.
  let tensorIndex = 0;
  const given = (name: string, count: number): Float32Array | undefined => {
    if (options.values === undefined) return undefined;
    const v = options.values(name);
    if (v.length !== count) throw new MobiError('BAD_ARGUMENT', `${name} needs ${count} values, not ${v.length}.`);
    return v;
  };
  const matrix = (name: string, cols: number, rows: number, scale: number, t: number): void => {
    const rng = new SeededRandom((seed * 1000003 + ++tensorIndex * 7919) >>> 0);
    w.tensor(name, [cols, rows], t, () => {
      return encodeTensor(t, given(name, cols * rows) ?? random(rng, cols * rows, 0, scale));
    });
  };
  const vector = (name: string, size: number, around: number): void => {
    const rng = new SeededRandom((seed * 1000003 + ++tensorIndex * 7919) >>> 0);
    w.tensor(name, [size], GgmlType.F32, () => {
      return encodeTensor(GgmlType.F32, given(name, size) ?? random(rng, size, around, 0.1));
    });
  };
  const norm = (name: string, size = d): void => {
    vector(name, size, 1);
    if (layout.layerNorms) vector(name.replace(/\.weight$/, '.bias'), size, 0);
  };
  // The embedding is read by row lookup: keep it in a type llama.cpp can get_rows from.
  // gemma's head is always the embedding, and its graph scales the inputs by sqrt(d): its rows are kept at the head's scale.
  matrix('token_embd.weight', d, nVocab, layout.alwaysTied ? 1 / Math.sqrt(d) : 1, type);
  norm('output_norm.weight');
  if ((options.untiedHead ?? true) && !layout.alwaysTied) matrix('output.weight', d, nVocab, 1 / Math.sqrt(d), type);
  const inScale = 1 / Math.sqrt(d);
  for (let il = 0; il < nLayer; il++) {
    const blk = `blk.${il}`;
    norm(`${blk}.attn_norm.weight`);
    if (layout.fusedQkv) matrix(`${blk}.attn_qkv.weight`, d, d + 2 * nKv * headDim, inScale, type);
    else {
      matrix(`${blk}.attn_q.weight`, d, d, inScale, type);
      matrix(`${blk}.attn_k.weight`, d, nKv * headDim, inScale, type);
      matrix(`${blk}.attn_v.weight`, d, nKv * headDim, inScale, type);
    }
    if (layout.qkNorm) {
      norm(`${blk}.attn_q_norm.weight`, headDim);
      norm(`${blk}.attn_k_norm.weight`, headDim);
    }
    matrix(`${blk}.attn_output.weight`, d, d, inScale, type);
    if (layout.postNorms) norm(`${blk}.post_attention_norm.weight`);
    norm(`${blk}.ffn_norm.weight`);
    if (layout.layerNorms) vector(`${blk}.attn_output.bias`, d, 0);
    if (layout.fusedGateUp) matrix(`${blk}.ffn_up.weight`, d, 2 * ff, inScale, type);
    else if (layout.layerNorms) {
      matrix(`${blk}.ffn_up.weight`, d, ff, inScale, type);
      vector(`${blk}.ffn_up.bias`, ff, 0);
    } else {
      matrix(`${blk}.ffn_gate.weight`, d, ff, inScale, type);
      matrix(`${blk}.ffn_up.weight`, d, ff, inScale, type);
    }
    matrix(`${blk}.ffn_down.weight`, ff, d, 1 / Math.sqrt(ff), type);
    if (layout.layerNorms) vector(`${blk}.ffn_down.bias`, d, 0);
    if (layout.postNorms) norm(`${blk}.post_ffw_norm.weight`);
  }
  fs.mkdirSync(path.dirname(path.resolve(options.out)), { recursive: true });
  w.write(options.out);
}

function random(rng: SeededRandom, count: number, around: number, scale: number): Float32Array {
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = around + scale * rng.normal();
  return values;
}
