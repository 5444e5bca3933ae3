/**
 * The fair stand-in for a real code model (issue 24): 6 layers, d = 384, a
 * sentencepiece BPE vocabulary of 8,192 pieces fitted to its own pretraining
 * corpus, pretrained by llama-finetune on 4 MB of TypeScript and JavaScript
 * from 400-odd installed packages (bench/lib/qualityCorpus.ts; the workspace's
 * package is not among them). Built once, cached under bench/.cache/quality
 * by the corpus's hash and the settings (about an hour on 2 cores).
 *
 * The entry point is bench/standIn.ts:
 *
 *   npm run bench:stand-in      (pretrains if needed, reports coverage and held-out loss)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readGgufFile } from '../../extension/core/model/gguf/GgufFile';
import { writeTinyModel } from '../../extension/core/model/tinyModel';
import { heldOutLoss, heldOutSequencesOf, measure } from './peerHarness';
import { ngramHeldOutLosses } from './ngramBaselines';
import { NORMAL_TOKEN, TokenCounts, tokenCounts } from '../../harness/spmVocabulary';
import { fitTokenizer, MIN_PIECE_COUNT, pretrainCorpus, PretrainCorpus, QUALITY_CACHE, SPM_PIECES } from './qualityCorpus';

export const STAND_IN = { layers: 6, embd: 384, heads: 6, kvHeads: 6, ff: 1024 };
const PRETRAIN_EPOCHS = 1;
/**
 * llama-finetune's Adam has no clipping, warm-up or per-tensor rates: at 2e-4
 * and above the training loss climbed back above uniform within a few hundred
 * steps on the first stand-in (docs/benchmarks.md), so the rate is low.
 */
const PRETRAIN_LR = 5e-5;
/** Tokens per pretraining window (llama-finetune takes one optimizer step per window; windows overlap by half). */
const PRETRAIN_CONTEXT = 512;

/** The pretraining corpus (its text file is the public text the privacy audit's inverter is fitted on). */
export function pretrainText(): string {
  return pretrainCorpus().file;
}

/** The stand-in's corpus, tokenizer and random-weight model (made once, cached), and where its pretrained model goes. */
export function standInFiles(): { pretrained: string; base: string; corpus: PretrainCorpus; vocab: string } {
  const s = STAND_IN;
  const corpus = pretrainCorpus();
  const vocab = fitTokenizer(corpus);
  const name = `standin-${s.layers}x${s.embd}-bpe${SPM_PIECES}-${corpus.hash}`;
  const base = path.join(QUALITY_CACHE, `${name}-f32.gguf`);
  const pretrained = path.join(QUALITY_CACHE, `${name}-pretrained-${PRETRAIN_EPOCHS}-lr${PRETRAIN_LR}-c${PRETRAIN_CONTEXT}.gguf`);
  if (!fs.existsSync(base)) {
    writeTinyModel({ out: base, layers: s.layers, embd: s.embd, heads: s.heads, kvHeads: s.kvHeads, ff: s.ff, type: 'f32', vocab, seed: 5, contextLength: 2048 });
  }
  return { pretrained, base, corpus, vocab };
}

/** The pretrained stand-in (pretrained once, then cached); seconds is null when the cached one was used. */
export async function standInBackbone(bin: string, log: (line: string) => void): Promise<{ pretrained: string; base: string; seconds: number | null; corpus: PretrainCorpus; vocab: string }> {
  const s = STAND_IN;
  const { pretrained, base, corpus, vocab } = standInFiles();
  if (fs.existsSync(pretrained)) return { pretrained, base, seconds: null, corpus, vocab };
  log(`pretraining the stand-in (${s.layers} x ${s.embd}, ${SPM_PIECES}-piece vocabulary) with llama-finetune on ${(corpus.bytes / 1e6).toFixed(1)} MB of code from ${corpus.packages} packages (once, cached; about an hour on 2 cores) ...`);
  const m = await measure(path.join(bin, 'llama-finetune'), ['-m', base, '-f', corpus.file, '-c', String(PRETRAIN_CONTEXT), '-b', String(PRETRAIN_CONTEXT), '-ub', String(PRETRAIN_CONTEXT), '--epochs', String(PRETRAIN_EPOCHS), '-lr', String(PRETRAIN_LR), '-t', '2', '-o', `${pretrained}.tmp`]);
  fs.writeFileSync(`${pretrained}.log`, m.stderr); // llama-finetune's progress: its training and validation loss
  fs.writeFileSync(`${pretrained}.seconds`, String(m.wallSeconds));
  fs.renameSync(`${pretrained}.tmp`, pretrained);
  return { pretrained, base, seconds: m.wallSeconds, corpus, vocab };
}

/** Pretraining seconds of a cached stand-in (as its run measured them). */
export function pretrainSeconds(pretrained: string, measured: number | null): number | null {
  return measured ?? (fs.existsSync(`${pretrained}.seconds`) ? Number(fs.readFileSync(`${pretrained}.seconds`, 'utf8')) : null);
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
export async function corpusBaselines(files: ReturnType<typeof standInFiles>, workspace: string): Promise<Record<string, unknown>> {
  const fit = await tokenCounts(files.vocab, fs.readFileSync(files.corpus.file, 'utf8'));
  const cov = vocabCoverage(files.vocab, fit);
  const ngrams = ngramHeldOutLosses(fit, await heldOutSequencesOf(files.base, workspace));
  return {
    vocab: (readGgufFile(files.vocab).kv.get('tokenizer.ggml.tokens')!.value as unknown[]).length,
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

/** What quality.json's `standIn` holds (issue 24's keys, issue 37's baselines). */
export async function describeStandIn(stand: Awaited<ReturnType<typeof standInBackbone>>, workspace: string): Promise<Record<string, unknown>> {
  return {
    layers: STAND_IN.layers,
    embd: STAND_IN.embd,
    ...(await corpusBaselines(stand, workspace)),
    pretrainSeconds: pretrainSeconds(stand.pretrained, stand.seconds),
    pretrainSettings: { epochs: PRETRAIN_EPOCHS, learningRate: PRETRAIN_LR, windowTokens: PRETRAIN_CONTEXT },
    heldOutLoss: await heldOutLoss(stand.pretrained, workspace, 2),
    heldOutLossRandomWeights: await heldOutLoss(stand.base, workspace, 2),
    heldOutOn: 'the quality workspace\'s held-out files (a package the stand-in never saw)',
  };
}
