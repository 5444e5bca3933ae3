/**
 * The fair stand-in for a real code model (issues 24 and 37): 6 layers,
 * d = 384, a sentencepiece BPE vocabulary fitted to its own pretraining
 * corpus (8,192 rows, pruned to 7,261 so that llama.cpp's tokenizer emits
 * every learned piece left at least MIN_PIECE_COUNT times over it),
 * pretrained for one epoch on 20 MB of code from the installed packages
 * (bench/lib/qualityCorpus.ts; the workspace's package is not among them)
 * by the project's own ONNX Runtime pretraining step
 * (bench/lib/pretrain/), with warm-up, a peak rate of 1e-3 and cosine decay.
 *
 * Built once and committed: bench/stand-in/ holds the Q8_0 model, its sha256
 * and how it was made (STAND_IN_MODEL, STAND_IN_RECORD). The benchmarks use
 * it as the F32 model its Q8_0 weights give (the on-device peer trains F32
 * only), so a fresh machine and the machine that built it run the same
 * weights. Without it the build runs, resumable from its checkpoints under
 * bench/.cache/quality (about an hour on 2 cores):
 *
 *   npm run bench:stand-in      (builds if needed, reports coverage and held-out loss)
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readGgufFile } from '../../extension/core/model/gguf/GgufFile';
import { heldOutLoss, heldOutSequencesOf, ROOT } from './peerHarness';
import { ngramHeldOutLosses } from './ngramBaselines';
import { NORMAL_TOKEN, TokenCounts, tokenCounts, tokenizeText } from '../../harness/spmVocabulary';
import { fitTokenizer, MIN_PIECE_COUNT, pretrainCorpus, PretrainCorpus, QUALITY_CACHE, SPM_PIECES } from './qualityCorpus';
import { PretrainSettings, initialWeights } from './pretrain/Pretrainer';
import { PretrainShape } from './pretrain/pretrainGraph';
import { PretrainPoint, pretrainStandIn } from './pretrain/pretrainStandIn';
import { readWeights, writeStandIn } from './pretrain/standInWeights';

export const STAND_IN = { layers: 6, embd: 384, heads: 6, kvHeads: 6, ff: 1024 };
/** The pretraining (issue 37: warm-up, a peak near 1e-3 for this size, decay). */
export const STAND_IN_PRETRAIN: PretrainSettings = {
  batch: 8, window: 512, peakLr: 1e-3, warmupSteps: 100, finalLrRatio: 0.1, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, clipNorm: 1, seed: 5,
};
/** Context length written into the model (the windows are 512 tokens). */
const CONTEXT_LENGTH = 2048;
/** The committed stand-in and the record of how it was made. */
export const STAND_IN_MODEL = path.join(ROOT, 'bench', 'stand-in', 'standin-6x384-q8_0.gguf');
export const STAND_IN_RECORD = path.join(ROOT, 'bench', 'stand-in', 'standin-6x384.json');

/** What STAND_IN_RECORD holds. */
export interface StandInRecord {
  sha256: string;
  corpus: { bytes: number; packages: number; files: number; hash: string };
  tokens: number;
  shape: typeof STAND_IN;
  settings: PretrainSettings;
  steps: number;
  trainedTokens: number;
  pretrainSeconds: number;
  engine: string;
  curve: PretrainPoint[];
}

/** The pretraining corpus (its text file is the public text the privacy audit's inverter is fitted on). */
export function pretrainText(): string {
  return pretrainCorpus().file;
}

const shapeOf = (vocab: number): PretrainShape => ({ layers: STAND_IN.layers, embd: STAND_IN.embd, heads: STAND_IN.heads, ff: STAND_IN.ff, vocab });
export const vocabSize = (file: string): number => (readGgufFile(file).kv.get('tokenizer.ggml.tokens')!.value as unknown[]).length;
/** The committed stand-in's vocabulary rows, written out (e.g. "7,261"). */
export const standInRows = (): string => vocabSize(STAND_IN_MODEL).toLocaleString('en-US');
/** The committed stand-in's vocabulary in words, e.g. "a 7,261-piece sentencepiece vocabulary fitted to its corpus". */
export const standInVocabulary = (): string => `a ${standInRows()}-piece sentencepiece vocabulary fitted to its corpus`;
const sha256Of = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/**
 * The stand-in's corpus and tokenizer (the committed model's when there is one,
 * else fitted to the corpus), its random-weight model (the pretraining's
 * initial weights) and where its pretrained F32 model goes.
 */
export async function standInFiles(log: (line: string) => void): Promise<{ pretrained: string; base: string; corpus: PretrainCorpus; vocab: string }> {
  const corpus = pretrainCorpus();
  const vocab = fs.existsSync(STAND_IN_MODEL) ? STAND_IN_MODEL : await fitTokenizer(corpus, log);
  const tag = crypto.createHash('sha256').update(JSON.stringify([STAND_IN, STAND_IN_PRETRAIN, fs.existsSync(STAND_IN_MODEL) ? sha256Of(STAND_IN_MODEL) : path.basename(vocab)])).digest('hex').slice(0, 12);
  const name = `standin-${STAND_IN.layers}x${STAND_IN.embd}-bpe${SPM_PIECES}-${tag}`;
  const base = path.join(QUALITY_CACHE, `${name}-init-f32.gguf`);
  const pretrained = path.join(QUALITY_CACHE, `${name}-pretrained-f32.gguf`);
  if (!fs.existsSync(base)) {
    fs.mkdirSync(QUALITY_CACHE, { recursive: true });
    const shape = shapeOf(vocabSize(vocab));
    writeStandIn(`${base}.tmp`, shape, vocab, initialWeights(shape, STAND_IN_PRETRAIN.seed), 'f32', CONTEXT_LENGTH);
    fs.renameSync(`${base}.tmp`, base);
  }
  return { pretrained, base, corpus, vocab };
}

/** The committed stand-in's record, checked against the model's sha256. */
export function standInRecord(): StandInRecord {
  const record = JSON.parse(fs.readFileSync(STAND_IN_RECORD, 'utf8')) as StandInRecord;
  const sha = sha256Of(STAND_IN_MODEL);
  if (sha !== record.sha256) throw new RangeError(`${STAND_IN_MODEL} has sha256 ${sha}, not the ${record.sha256} its record names: restore it from git or rebuild it (delete both files, then npm run bench:stand-in)`);
  return record;
}

/**
 * Pretrains the stand-in when it is not committed (resuming from a checkpoint
 * when one is left) and writes the Q8_0 model and its record into
 * bench/stand-in/. Returns the pretraining's seconds, 0 when the committed
 * model is there, or null when it stopped at `stopAtStep` (its checkpoint
 * holds the run).
 */
export async function buildStandIn(log: (line: string) => void, stopAtStep?: number): Promise<number | null> {
  if (fs.existsSync(STAND_IN_MODEL)) return 0;
  const { corpus, vocab } = await standInFiles(log);
  const ids = path.join(QUALITY_CACHE, `tokens-${corpus.hash}-${path.basename(vocab, '.gguf')}.bin`);
  if (!fs.existsSync(ids)) {
    log(`tokenizing the ${(corpus.bytes / 1e6).toFixed(1)} MB corpus ...`);
    const t = await tokenizeText(vocab, fs.readFileSync(corpus.file, 'utf8'));
    fs.writeFileSync(`${ids}.tmp`, new Uint8Array(t.buffer));
    fs.renameSync(`${ids}.tmp`, ids);
  }
  const raw = fs.readFileSync(ids);
  const tokens = new Int32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const shape = shapeOf(vocabSize(vocab));
  const checkpoint = path.join(QUALITY_CACHE, `standin-${path.basename(vocab, '.gguf')}.ckpt`);
  const bos = Number(readGgufFile(vocab).kv.get('tokenizer.ggml.bos_token_id')!.value);
  const run = await pretrainStandIn({ shape, settings: STAND_IN_PRETRAIN, tokens, bos, checkpoint, threads: 2, log, stopAtStep });
  if (run === null) return null;
  fs.mkdirSync(path.dirname(STAND_IN_MODEL), { recursive: true });
  writeStandIn(`${STAND_IN_MODEL}.tmp`, shape, vocab, run.weights, 'q8_0', CONTEXT_LENGTH);
  fs.renameSync(`${STAND_IN_MODEL}.tmp`, STAND_IN_MODEL);
  const record: StandInRecord = {
    sha256: sha256Of(STAND_IN_MODEL), corpus: { bytes: corpus.bytes, packages: corpus.packages, files: corpus.files, hash: corpus.hash }, tokens: tokens.length,
    shape: STAND_IN, settings: STAND_IN_PRETRAIN, steps: run.steps, trainedTokens: run.tokens, pretrainSeconds: Math.round(run.seconds),
    engine: 'ONNX Runtime CPU (bench/lib/pretrain/), 2 threads', curve: run.curve,
  };
  fs.writeFileSync(STAND_IN_RECORD, `${JSON.stringify(record, null, 2)}\n`);
  fs.rmSync(checkpoint, { force: true });
  return run.seconds;
}

/**
 * The stand-in (built first if it is not committed) as the F32 model its
 * Q8_0 weights give. `seconds` is null when the committed model was used.
 */
export async function standInBackbone(log: (line: string) => void): Promise<{ pretrained: string; base: string; seconds: number | null; corpus: PretrainCorpus; vocab: string }> {
  const built = await buildStandIn(log);
  const seconds = built === 0 ? null : built;
  const record = standInRecord();
  const files = await standInFiles(log);
  if (files.corpus.hash !== record.corpus.hash) log(`note: the corpus built here (${files.corpus.hash}) is not the one the committed stand-in was pretrained on (${record.corpus.hash}): the installed packages differ`);
  if (!fs.existsSync(files.pretrained)) {
    writeStandIn(`${files.pretrained}.tmp`, shapeOf(vocabSize(STAND_IN_MODEL)), STAND_IN_MODEL, readWeights(STAND_IN_MODEL), 'f32', CONTEXT_LENGTH);
    fs.renameSync(`${files.pretrained}.tmp`, files.pretrained);
  }
  return { ...files, seconds };
}

/** Share of the learned pieces (not control or byte tokens) that the tokenizer emits at least MIN_PIECE_COUNT times over the corpus (its counts). */
export function vocabCoverage(vocab: string, { counts, tokens }: TokenCounts): { coverage: number; pieces: number; tokens: number } {
  const types = readGgufFile(vocab).kv.get('tokenizer.ggml.token_type')!.value as number[];
  let pieces = 0;
  let often = 0;
  types.forEach((t, i) => {
    if (t !== NORMAL_TOKEN) return;
    pieces++;
    if (counts[i]! >= MIN_PIECE_COUNT) often++;
  });
  return { coverage: often / pieces, pieces, tokens };
}

/** What the corpus and tokenizer alone give (no pretrained model): their size, vocabulary coverage and the n-gram baselines on `workspace`'s held-out sequences. */
export async function corpusBaselines(files: Awaited<ReturnType<typeof standInFiles>>, workspace: string): Promise<Record<string, unknown>> {
  const fit = await tokenCounts(files.vocab, fs.readFileSync(files.corpus.file, 'utf8'));
  const cov = vocabCoverage(files.vocab, fit);
  const ngrams = ngramHeldOutLosses(fit, await heldOutSequencesOf(files.base, workspace));
  return {
    vocab: vocabSize(files.vocab),
    pretrainBytes: files.corpus.bytes,
    pretrainPackages: files.corpus.packages,
    pretrainTokens: cov.tokens,
    vocabCoverage: cov.coverage,
    vocabCoverageRule: `share of the ${cov.pieces} learned pieces (control and byte tokens aside) emitted at least ${MIN_PIECE_COUNT} times over the pretraining corpus by llama.cpp's tokenizer`,
    unigramHeldOutLoss: ngrams.unigram,
    bigramHeldOutLoss: ngrams.bigram,
    ngramRule: `add-one-smoothed unigram and bigram models fitted on the pretraining corpus's ${fit.tokens} tokens (the same tokenizer), scored on the held-out loss's ${ngrams.tokens} positions`,
  };
}

/** How the committed stand-in was pretrained, from its record. */
function pretrainDescription(): Record<string, unknown> {
  const r = standInRecord();
  return {
    pretrainSeconds: r.pretrainSeconds,
    pretrainSettings: { ...r.settings, epochs: 1, steps: r.steps, tokens: r.trainedTokens },
    pretrainEngine: r.engine,
    pretrainCurve: r.curve.map((p) => ({ step: p.step, validationLoss: Number(p.validationLoss.toFixed(4)) })),
    model: { file: path.relative(ROOT, STAND_IN_MODEL), sha256: r.sha256, type: 'Q8_0, used as the F32 model its weights give' },
  };
}

/** What quality.json's `standIn` holds (issue 24's keys, issue 37's baselines). */
export async function describeStandIn(stand: Awaited<ReturnType<typeof standInBackbone>>, workspace: string): Promise<Record<string, unknown>> {
  return {
    layers: STAND_IN.layers,
    embd: STAND_IN.embd,
    ...(await corpusBaselines(stand, workspace)),
    ...pretrainDescription(),
    heldOutLoss: await heldOutLoss(stand.pretrained, workspace, 2),
    heldOutLossRandomWeights: await heldOutLoss(stand.base, workspace, 2),
    heldOutOn: 'the quality workspace\'s held-out files (a package the stand-in never saw)',
  };
}
