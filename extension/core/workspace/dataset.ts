import { createHash } from 'node:crypto';
import { MobiError } from '../MobiError';
import { ScannedFile } from './scanWorkspace';
import { SeededRandom } from '../../../common/SeededRandom';
import { runSteps, runStepsSliced } from '../../../common/sliced';

/** Options of the training data. */
export interface DatasetOptions {
  /** Tokens a sequence predicts (each sequence holds seqLen + 1 tokens). Default 128. */
  seqLen?: number;
  /** Fraction of files held out for evaluation (at least one file). Default 0.1. */
  heldOutFraction?: number;
  /** Seed of the split and the shuffles. Default 1. */
  seed?: number;
  /** Cap on held-out sequences (evaluation time). Default 32. */
  maxHeldOutSequences?: number;
  /** The model's fill-in-the-middle tokens; with them, a share of the training sequences is FIM-transformed. Default: none. */
  fim?: FimTokens;
  /** Share of training sequences FIM-transformed when `fim` is given. Default 0.5. */
  fimRate?: number;
  /** Context from other training files before a share of the training sequences, as completions put it. Default: none. */
  context?: TrainingContext;
  /** The paths held out, when the split was made over more files than these (an update's: the whole workspace's split). Default: heldOutFiles of these. */
  heldOut?: ReadonlySet<string>;
}

/**
 * Training sequences that carry retrieved context, as completions' prompts do:
 * [BOS] context code, or <fim_pre> context prefix <fim_suf> suffix <fim_mid>
 * middle. The context's own tokens are not trained on (their targets are
 * masked); the code it displaces from a sequence goes to a sequence of its own.
 */
export interface TrainingContext {
  /** Share of training sequences that carry context. */
  rate: number;
  /** Most tokens of context in a sequence. */
  maxTokens: number;
  /** The beginning-of-sequence token, kept first when a sequence starts with it. */
  bos?: number;
  /** The context's tokens for a sequence of the file `path` whose text is about `query` (at most `maxTokens`; empty when nothing fits). */
  tokensFor(path: string, query: string, maxTokens: number): Int32Array;
}

/** A model's fill-in-the-middle tokens. */
export interface FimTokens {
  pre: number;
  suf: number;
  mid: number;
}

/**
 * A sequence in fill-in-the-middle order, as completions prompt the model:
 * cut at two seeded points into prefix, middle and suffix, then
 * <fim_pre> prefix <fim_suf> suffix <fim_mid> middle, at the same length (the
 * middle's last tokens make room for the three markers).
 */
export function fimTransform(seq: Int32Array, fim: FimTokens, rng: SeededRandom): Int32Array {
  const n = seq.length;
  let a = rng.int(n + 1);
  let b = rng.int(n + 1);
  if (a > b) [a, b] = [b, a];
  // Three markers make room: the middle's end goes first, then the suffix's far end, then the prefix's start.
  let excess = 3;
  const cutMiddle = Math.min(excess, b - a);
  excess -= cutMiddle;
  const cutSuffix = Math.min(excess, n - b);
  excess -= cutSuffix;
  const prefix = seq.subarray(excess, a);
  const suffix = seq.subarray(b, n - cutSuffix);
  const middle = seq.subarray(a, b - cutMiddle);
  return Int32Array.from([fim.pre, ...prefix, fim.suf, ...suffix, fim.mid, ...middle]);
}

export interface Dataset {
  /** Training sequences: token ids, each at most seqLen + 1 long, never crossing files; a share FIM-transformed when the model has FIM tokens. */
  train: Int32Array[];
  heldOut: Int32Array[];
  /** Per training sequence: its target rows [from, to) that are not trained on (the context's), or undefined. */
  trainMasked: ([number, number] | undefined)[];
  /** The held-out sequences FIM-transformed (empty for models without FIM tokens): completions' format, evaluated apart. */
  heldOutFim: Int32Array[];
  trainFiles: number;
  heldOutFiles: number;
  /** Training sequences per training file, in the order the files were given. */
  trainFileSequences: number[];
  /** Tokens predicted per pass over the training sequences. */
  trainTokens: number;
  seqLen: number;
  seed: number;
}

/** True when the file goes to the held-out set: a seeded hash of its path, stable across runs. */
function heldOutRank(path: string, seed: number): number {
  return createHash('sha256').update(`${seed}:${path}`).digest().readUInt32BE(0) / 2 ** 32;
}

/** A generator seeded by `seed` and a sequence's tokens. */
function sequenceRandom(seed: number, seq: Int32Array): SeededRandom {
  const h = createHash('sha256').update(`${seed}:`).update(new Uint8Array(seq.buffer, seq.byteOffset, seq.byteLength)).digest();
  return new SeededRandom(h.readUInt32BE(0));
}

/** The files the split holds out (deterministic: a seeded hash of each path; at least one, never all). */
export function heldOutFiles<F extends { path: string }>(files: F[], options: Pick<DatasetOptions, 'seed' | 'heldOutFraction'> = {}): F[] {
  const seed = options.seed ?? 1;
  const ranked = [...files].sort((a, b) => heldOutRank(a.path, seed) - heldOutRank(b.path, seed));
  const nHeld = Math.min(files.length - 1, Math.max(1, Math.round(files.length * (options.heldOutFraction ?? 0.1))));
  return ranked.slice(0, nHeld);
}

/**
 * Tokenizes files with the backbone's tokenizer and cuts them into sequences
 * (one file per sequence: no attention across files). The held-out split is by
 * file and deterministic.
 */
export function buildDataset(files: ScannedFile[], tokenize: (text: string) => Int32Array, options: DatasetOptions = {}): Dataset {
  return runSteps(datasetSteps(files, tokenize, options));
}

/** buildDataset with the event loop free after each file and each sequence given context (a host's thread). */
export function buildDatasetAsync(files: ScannedFile[], tokenize: (text: string) => Int32Array, options: DatasetOptions = {}): Promise<Dataset> {
  return runStepsSliced(datasetSteps(files, tokenize, options));
}

function* datasetSteps(files: ScannedFile[], tokenize: (text: string) => Int32Array, options: DatasetOptions): Generator<void, Dataset> {
  const seqLen = options.seqLen ?? 128;
  const seed = options.seed ?? 1;
  if (files.length < 2) {
    throw new MobiError('EMPTY_WORKSPACE', `The workspace has ${files.length} usable source file(s); at least 2 are needed (one is held out to measure progress).`);
  }
  const held = options.heldOut ?? new Set(heldOutFiles(files, options).map((f) => f.path));
  const context = options.context && options.context.rate > 0 && options.context.maxTokens > 0 ? options.context : undefined;
  const ctxRng = new SeededRandom(seed ^ 0xc0c0);
  // A file's sequences; a pause after each one given context (retrieval and tokenization), and after the file.
  function* cut(f: ScannedFile): Generator<void, { seq: Int32Array; ctx?: Int32Array }[]> {
    const tokens = tokenize(f.text);
    const out: { seq: Int32Array; ctx?: Int32Array }[] = [];
    for (let start = 0; start + 1 < tokens.length;) {
      const seq = tokens.slice(start, Math.min(tokens.length, start + seqLen + 1));
      // The text the sequence holds, about: its share of the file's characters.
      const query = () => f.text.slice(Math.floor((start / tokens.length) * f.text.length), Math.ceil(((start + seq.length) / tokens.length) * f.text.length));
      const ctx = context && !held.has(f.path) && seq.length > 8 && ctxRng.next() < context.rate
        ? context.tokensFor(f.path, query(), Math.min(context.maxTokens, seq.length - 8)) : undefined;
      if (ctx && ctx.length > 0) {
        // The context takes room from the code; the code it displaces starts the next sequence.
        const code = seq.subarray(0, seq.length - ctx.length);
        out.push({ seq: code, ctx });
        start += code.length - 1;
        yield;
      } else {
        out.push({ seq });
        start += seqLen;
      }
    }
    yield;
    return out;
  }
  const trainParts: { seq: Int32Array; ctx?: Int32Array }[] = [];
  const trainFileSequences: number[] = [];
  let heldOut: Int32Array[] = [];
  for (const f of files) {
    const parts = yield* cut(f);
    if (held.has(f.path)) heldOut.push(...parts.map((x) => x.seq));
    else {
      trainParts.push(...parts);
      trainFileSequences.push(parts.length);
    }
  }
  if (trainParts.length === 0) throw new MobiError('EMPTY_WORKSPACE', 'The training files produced no sequences (they are too short).');
  if (heldOut.length === 0) throw new MobiError('EMPTY_WORKSPACE', 'The held-out files produced no sequences (they are too short).');
  const cap = options.maxHeldOutSequences ?? 32;
  if (heldOut.length > cap) heldOut = new SeededRandom(seed ^ 0x5eed).shuffle(heldOut).slice(0, cap);
  const train = trainParts.map((x) => x.seq);
  let heldOutFim: Int32Array[] = [];
  const fim = options.fim;
  const fimed = new Set<number>();
  if (fim) {
    const rate = options.fimRate ?? 0.5;
    for (let i = 0; i < train.length; i++) {
      // Seeded by the sequence's own tokens: the same code takes the same form in every job (an update's cached activations match).
      const rng = sequenceRandom(seed ^ 0xf1f1, train[i]!);
      if (rng.next() < rate && train[i]!.length > 3) {
        train[i] = fimTransform(train[i]!, fim, rng);
        fimed.add(i);
      }
    }
    heldOutFim = heldOut.filter((s) => s.length > 3).map((s) => fimTransform(s, fim, sequenceRandom(seed ^ 0xf2f2, s)));
  }
  const trainMasked: ([number, number] | undefined)[] = train.map(() => undefined);
  for (const [i, { ctx }] of trainParts.entries()) {
    if (!ctx) continue;
    // After <fim_pre> in FIM order, else after BOS when the sequence starts with it: as completionPrompt puts it.
    const s = train[i]!;
    const at = fimed.has(i) || (context!.bos !== undefined && s[0] === context!.bos) ? 1 : 0;
    train[i] = Int32Array.from([...s.subarray(0, at), ...ctx, ...s.subarray(at)]);
    // Target row t predicts token t + 1: the rows predicting the context's tokens, and with the context first, the row
    // predicting the code's first token, which the previous sequence already trains on.
    trainMasked[i] = [0, ctx.length];
  }
  const trainTokens = train.reduce((a, s, i) => a + s.length - 1 - (trainMasked[i] ? trainMasked[i]![1] - trainMasked[i]![0] : 0), 0);
  const nHeld = files.filter((f) => held.has(f.path)).length;
  return { train, trainMasked, heldOut, heldOutFim, trainFiles: files.length - nHeld, heldOutFiles: nHeld, trainTokens, seqLen, seed, trainFileSequences };
}

/** Which training sequences (indices into data.train) make batch `index` (epochs reshuffle with seed + epoch; the order is the same on every run). */
export function trainBatchIndices(data: Dataset, batchSize: number, index: number): number[] {
  const perEpoch = Math.ceil(data.train.length / batchSize);
  const epoch = Math.floor(index / perEpoch);
  const order = new SeededRandom(data.seed * 7919 + epoch).shuffle(data.train.map((_, i) => i));
  const j = index % perEpoch;
  return order.slice(j * batchSize, (j + 1) * batchSize);
}

/** Sequences of training batch `index`. */
export function trainBatchSequences(data: Dataset, batchSize: number, index: number): Int32Array[] {
  return trainBatchIndices(data, batchSize, index).map((i) => data.train[i]!);
}

export function batchesPerEpoch(data: Dataset, batchSize: number): number {
  return Math.ceil(data.train.length / batchSize);
}

/** The dataset with its first `n` training sequences only (an update within a time budget: the changed files' come first). */
export function firstTrainSequences(data: Dataset, n: number): Dataset {
  return keepTrainSequences(data, (i) => i < n);
}

/** The dataset with the training sequences `keep` accepts only (by index). */
export function keepTrainSequences(data: Dataset, keep: (i: number, seq: Int32Array) => boolean): Dataset {
  const kept = data.train.flatMap((s, i) => (keep(i, s) ? [i] : []));
  if (kept.length === data.train.length) return data;
  // Each file's count of what is kept: its sequences are consecutive, in the files' order.
  let file = 0;
  let end = data.trainFileSequences[0] ?? 0;
  const trainFileSequences = data.trainFileSequences.map(() => 0);
  for (const i of kept) {
    while (i >= end) end += data.trainFileSequences[++file]!;
    trainFileSequences[file]!++;
  }
  const train = kept.map((i) => data.train[i]!);
  const trainMasked = kept.map((i) => data.trainMasked[i]);
  const trainTokens = train.reduce((a, s, i) => a + s.length - 1 - (trainMasked[i] ? trainMasked[i]![1] - trainMasked[i]![0] : 0), 0);
  return { ...data, train, trainMasked, trainTokens, trainFileSequences };
}

/** Inputs (all but the last token), next-token targets and mask of a list of sequences; `masked[i]`: sequence i's target rows [from, to) not trained on. */
export function splitInputsTargets(seqs: Int32Array[], masked: ([number, number] | undefined)[] = []): { inputs: Int32Array[]; targets: Int32Array; mask: Uint8Array; rows: number } {
  const rows = seqs.reduce((a, s) => a + s.length - 1, 0);
  const targets = new Int32Array(rows);
  const mask = new Uint8Array(rows).fill(1);
  let at = 0;
  for (const [i, s] of seqs.entries()) {
    targets.set(s.subarray(1), at);
    const m = masked[i];
    if (m) mask.fill(0, at + m[0], at + m[1]);
    at += s.length - 1;
  }
  return { inputs: seqs.map((s) => s.subarray(0, s.length - 1)), targets, mask, rows };
}
