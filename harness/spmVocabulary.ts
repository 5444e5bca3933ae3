/**
 * A sentencepiece vocabulary fitted to a text, for llama.cpp: Debian's
 * `sentencepiece` (spm_train, spm_export_vocab) fits a BPE vocabulary with
 * byte fallback, written here as a vocabulary-only GGUF in llama.cpp's SPM
 * form (`<unk>`, `<s>`, `</s>`, 256 byte tokens, then the pieces by merge
 * rank), which tinyModel's `vocab` option copies into a model. Whitespace is
 * kept as it is (code): no dummy prefix (the GGUF says add_space_prefix
 * false), no whitespace folding, whitespace-only pieces allowed (indentation).
 * spm_train reads lines, so a newline is the byte token 0x0A.
 *
 * Not every piece is emitted often: BPE keeps every intermediate merge as a
 * piece, and llama.cpp's tokenizer (which replays the merges by score) emits
 * few of them alone (`unction` is almost always inside `function`).
 * `pruneVocabulary` drops the pieces emitted less than a given number of
 * times over the text, and then the longer pieces that could only be reached
 * through them (which the next round finds emitted never), until every
 * learned piece left is emitted often enough (issue 37: on the stand-in's
 * corpus 8,192 pieces become 7,261 in two rounds, with 6.9% more tokens). A
 * unigram vocabulary would need no pruning but llama.cpp's T5 tokenizer,
 * whose detokenizer removes spaces before punctuation (wrong for code).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Backbone } from '../extension/core/model/Backbone';
import { GgufValueType, readGgufFile } from '../extension/core/model/gguf/GgufFile';
import { GgufWriter } from '../extension/core/model/gguf/GgufWriter';
import { writeTinyModel } from '../extension/core/model/tinyModel';

/** Token type of a learned piece (not control, unknown or byte). */
export const NORMAL_TOKEN = 1;

/** Whether Debian's sentencepiece tools are installed (null) or what is missing. */
export function spmMissing(): string | null {
  try {
    execFileSync('spm_train', ['--help'], { stdio: 'ignore' });
    return null;
  } catch {
    return 'spm_train is not installed (apt-get install sentencepiece)';
  }
}

export interface Piece {
  piece: string;
  score: number;
  type: number;
}

/** Writes pieces as a vocabulary-only GGUF in llama.cpp's SPM form. */
function writeVocabulary(rows: Piece[], out: string): void {
  const w = new GgufWriter();
  w.string('general.architecture', 'llama');
  w.string('tokenizer.ggml.model', 'llama');
  w.array('tokenizer.ggml.tokens', GgufValueType.STRING, rows.map((r) => r.piece));
  w.array('tokenizer.ggml.scores', GgufValueType.FLOAT32, rows.map((r) => r.score));
  w.array('tokenizer.ggml.token_type', GgufValueType.INT32, rows.map((r) => r.type));
  w.u32('tokenizer.ggml.unknown_token_id', 0);
  w.u32('tokenizer.ggml.bos_token_id', 1);
  w.u32('tokenizer.ggml.eos_token_id', 2);
  w.bool('tokenizer.ggml.add_bos_token', true);
  w.bool('tokenizer.ggml.add_space_prefix', false);
  w.write(`${out}.tmp`);
  fs.renameSync(`${out}.tmp`, out);
}

/** What llama.cpp's tokenizer emits over a text: each id's count, and each pair's of ids in a row (key `previous * vocabulary + next`). */
export interface TokenCounts {
  counts: Uint32Array;
  tokens: number;
  pairs: Map<number, number>;
}

/** What llama.cpp's tokenizer emits for `text` with `vocab` (through a one-layer model carrying that vocabulary), no BOS. */
export async function tokenizeText(vocab: string, text: string): Promise<Int32Array> {
  const model = `${vocab}.counter.gguf`;
  writeTinyModel({ out: model, layers: 1, embd: 64, heads: 2, kvHeads: 2, ff: 64, type: 'f32', vocab, seed: 1 });
  const bb = await Backbone.open(model, { threads: 2 });
  try {
    const parts: Int32Array[] = [];
    // In pieces cut at line ends (no piece crosses a line, as spm_train saw them).
    for (let at = 0; at < text.length;) {
      let end = Math.min(text.length, at + 65536);
      const nl = text.indexOf('\n', end);
      end = nl < 0 ? text.length : nl + 1;
      parts.push(bb.tokenize(text.slice(at, end), false));
      at = end;
    }
    const out = new Int32Array(parts.reduce((a, p) => a + p.length, 0));
    let n = 0;
    for (const p of parts) {
      out.set(p, n);
      n += p.length;
    }
    return out;
  } finally {
    bb.dispose();
    fs.rmSync(model, { force: true });
  }
}

/** How often llama.cpp's tokenizer emits each id of `vocab`, and each pair of ids in a row, over `text` (a pair that spans two of tokenizeText's pieces is counted too). */
export async function tokenCounts(vocab: string, text: string): Promise<TokenCounts> {
  const ids = await tokenizeText(vocab, text);
  const counts = new Uint32Array((readGgufFile(vocab).kv.get('tokenizer.ggml.tokens')!.value as unknown[]).length);
  const pairs = new Map<number, number>();
  ids.forEach((id, i) => {
    counts[id]!++;
    if (i > 0) {
      const key = ids[i - 1]! * counts.length + id;
      pairs.set(key, (pairs.get(key) ?? 0) + 1);
    }
  });
  return { counts, tokens: ids.length, pairs };
}

/** The rows of a vocabulary-only GGUF (or of a model's vocabulary). */
function readVocabulary(vocab: string): Piece[] {
  const kv = readGgufFile(vocab).kv;
  const scores = kv.get('tokenizer.ggml.scores')!.value as number[];
  const types = kv.get('tokenizer.ggml.token_type')!.value as number[];
  return (kv.get('tokenizer.ggml.tokens')!.value as string[]).map((piece, i) => ({ piece, score: scores[i]!, type: types[i]! }));
}

/** What pruneVocabulary did: the pieces before and after (all rows), and the rounds it took. */
export interface Pruning {
  piecesBefore: number;
  piecesAfter: number;
  rounds: number;
}

/**
 * Writes to `out` the vocabulary `vocab` less its learned pieces that
 * llama.cpp's tokenizer emits fewer than `minCount` times over `text`,
 * round after round (a dropped piece can leave longer pieces unreachable)
 * until none is left to drop. Control and byte tokens are kept, so every
 * text still tokenizes; the rows keep their order and scores.
 */
export async function pruneVocabulary(vocab: string, text: string, minCount: number, out: string): Promise<Pruning> {
  let rows = readVocabulary(vocab);
  const piecesBefore = rows.length;
  let from = vocab;
  for (let rounds = 0; ; rounds++) {
    const { counts } = await tokenCounts(from, text);
    const kept = rows.filter((r, i) => r.type !== NORMAL_TOKEN || counts[i]! >= minCount);
    if (kept.length === rows.length) {
      if (from !== out) writeVocabulary(rows, out);
      return { piecesBefore, piecesAfter: rows.length, rounds };
    }
    rows = kept;
    writeVocabulary(rows, out);
    from = out;
  }
}

/** Fits a BPE vocabulary of `pieces` pieces (byte and control tokens included) to the text in `corpusFile` and writes it to `out` as a vocabulary-only GGUF. */
export function fitSpmVocabulary(corpusFile: string, out: string, pieces: number): Piece[] {
  const prefix = `${out}.spm`;
  try {
    execFileSync('spm_train', [
      `--input=${corpusFile}`, `--model_prefix=${prefix}`, `--vocab_size=${pieces}`, '--model_type=bpe',
      '--byte_fallback=true', '--character_coverage=0.9999', '--add_dummy_prefix=false', '--remove_extra_whitespaces=false',
      '--allow_whitespace_only_pieces=true', '--split_digits=true', '--normalization_rule_name=identity',
      '--max_sentence_length=8192', '--num_threads=2', '--unk_id=0', '--bos_id=1', '--eos_id=2', '--pad_id=-1',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    execFileSync('spm_export_vocab', [`--model=${prefix}.model`, `--output=${prefix}.vocab`]);
    const type = (p: string, i: number): number => (i === 0 ? 2 : i < 3 ? 3 : /^<0x[0-9A-F]{2}>$/.test(p) ? 6 : NORMAL_TOKEN);
    const rows = fs.readFileSync(`${prefix}.vocab`, 'utf8').split('\n').filter((l) => l.length > 0).map((l, i) => {
      const tab = l.lastIndexOf('\t');
      const piece = l.slice(0, tab);
      return { piece, score: Number(l.slice(tab + 1)), type: type(piece, i) };
    });
    writeVocabulary(rows, out);
    return rows;
  } finally {
    for (const ext of ['.model', '.vocab']) fs.rmSync(`${prefix}${ext}`, { force: true });
  }
}
