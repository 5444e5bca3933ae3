/**
 * The texts of the quality benchmark (issue 24), all read at run time from the
 * packages npm installed (never committed), cached under bench/.cache/quality:
 *
 * - the workspace: a few whole packages' hand-written source (WORKSPACE_PACKAGES),
 *   split by the product's own held-out rule, the same split for every method;
 * - the pretraining corpus: at least 20 MB of code (TypeScript, JavaScript and
 *   the C and C++ some packages ship; issue 37) from every other installed
 *   package, at most PER_PACKAGE_BYTES from each (so one large package cannot
 *   be most of it), deduplicated by content, minified and generated bundles
 *   left out;
 * - the tokenizer: a sentencepiece BPE vocabulary fitted to that corpus, less
 *   the pieces llama.cpp's tokenizer emits fewer than MIN_PIECE_COUNT times
 *   over it (harness/spmVocabulary.ts; issue 37's coverage).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fitSpmVocabulary, pruneVocabulary } from '../../harness/spmVocabulary';
import { BENCH_CACHE } from './benchModels';

export const QUALITY_CACHE = path.join(BENCH_CACHE, 'quality');
const ROOT = path.resolve(__dirname, '..', '..', '..');
const NODE_MODULES = path.join(ROOT, 'node_modules');

/** The workspace's packages: their source folders, never part of the pretraining corpus. */
const WORKSPACE_PACKAGES: { name: string; folder: string; keep: RegExp }[] = [
  { name: 'ajv', folder: 'lib', keep: /\.ts$/ },
];
/** The workspace: whole files, in sorted order, until this many bytes (issue 24: at least 256 KB). */
const WORKSPACE_BYTES = 260_000;
export const PRETRAIN_BYTES = 20_500_000;
const PER_PACKAGE_BYTES = 250_000;
/** Sentencepiece pieces fitted (byte and control tokens included), before the rare ones are pruned. */
export const SPM_PIECES = 8192;

const isCode = (name: string): boolean => /\.(ts|mts|cts|js|mjs|cjs|c|cc|cpp|h|hpp)$/.test(name) && !/\.min\.js$/.test(name) && !/\.d\.[cm]?ts$/.test(name);
const isDeclaration = (name: string): boolean => /\.d\.[cm]?ts$/.test(name);

/** A file that looks generated: minified (long lines) or a bundle with a source map inlined. */
function looksGenerated(text: string): boolean {
  const lines = text.split('\n');
  return lines.some((l) => l.length > 1000) || text.length / lines.length > 160 || text.includes('sourceMappingURL=data:');
}

/** The package a file under node_modules belongs to (the innermost one, scope included). */
function packageOf(file: string): string {
  const parts = path.relative(NODE_MODULES, file).split(path.sep);
  const at = parts.lastIndexOf('node_modules');
  const rest = at < 0 ? parts : parts.slice(at + 1);
  return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
}

function filesUnder(dir: string, keep: (name: string) => boolean): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && keep(e.name)) out.push(p);
    }
  };
  walk(dir);
  return out;
}

const sha = (s: string): string => crypto.createHash('sha256').update(s).digest('hex');

/** The workspace folder (copied once): the packages' files under their own names. */
export function qualityWorkspace(): { dir: string; bytes: number; packages: string[] } {
  const dir = path.join(QUALITY_CACHE, `workspace-${WORKSPACE_BYTES}`);
  if (!fs.existsSync(dir)) {
    const tmp = `${dir}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    let taken = 0;
    for (const p of WORKSPACE_PACKAGES) {
      const src = path.join(NODE_MODULES, p.name, p.folder);
      for (const f of filesUnder(src, (n) => p.keep.test(n) && !isDeclaration(n))) {
        if (taken >= WORKSPACE_BYTES) break;
        taken += fs.statSync(f).size;
        const to = path.join(tmp, p.name, path.relative(src, f));
        fs.mkdirSync(path.dirname(to), { recursive: true });
        fs.copyFileSync(f, to);
      }
    }
    fs.renameSync(tmp, dir);
  }
  const bytes = filesUnder(dir, () => true).reduce((a, f) => a + fs.statSync(f).size, 0);
  if (bytes < WORKSPACE_BYTES) throw new RangeError(`the quality workspace holds ${bytes} bytes, under ${WORKSPACE_BYTES / 1000} KB: are ${WORKSPACE_PACKAGES.map((p) => p.name).join(', ')} installed?`);
  return { dir, bytes, packages: WORKSPACE_PACKAGES.map((p) => p.name) };
}

export interface PretrainCorpus {
  /** The corpus as one text file (files in turn, package by package round-robin). */
  file: string;
  bytes: number;
  packages: number;
  files: number;
  /** Hash of the corpus text: names the tokenizer and the stand-in built from it. */
  hash: string;
}

/**
 * At least PRETRAIN_BYTES of code from the installed packages outside the
 * workspace: per package at most PER_PACKAGE_BYTES, implementation files
 * first and declarations after, taken in turn from each package (llama-finetune
 * neither shuffles nor mixes, so no package comes all at the end).
 */
export function pretrainCorpus(): PretrainCorpus {
  const meta = path.join(QUALITY_CACHE, `pretrain-${PRETRAIN_BYTES}.json`);
  if (fs.existsSync(meta)) return JSON.parse(fs.readFileSync(meta, 'utf8')) as PretrainCorpus;
  const excluded = new Set(WORKSPACE_PACKAGES.map((p) => p.name));
  const byPackage = new Map<string, string[]>();
  const all = filesUnder(NODE_MODULES, (n) => isCode(n) || isDeclaration(n));
  // Implementation first, declarations after, within each package.
  all.sort((a, b) => Number(isDeclaration(a)) - Number(isDeclaration(b)));
  for (const f of all) {
    const pkg = packageOf(f);
    if (excluded.has(pkg) || f.includes(`${path.sep}.cache${path.sep}`)) continue;
    if (!byPackage.has(pkg)) byPackage.set(pkg, []);
    byPackage.get(pkg)!.push(f);
  }
  const seen = new Set<string>();
  const queues = [...byPackage.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([pkg, files]) => ({ pkg, files, taken: 0 }));
  const parts: string[] = [];
  let bytes = 0;
  let nFiles = 0;
  const used = new Set<string>();
  while (bytes < PRETRAIN_BYTES && queues.some((q) => q.files.length > 0)) {
    for (const q of queues) {
      while (q.files.length > 0 && q.taken < PER_PACKAGE_BYTES) {
        const f = q.files.shift()!;
        const size = fs.statSync(f).size;
        if (size < 200 || size > 200_000) continue;
        const text = fs.readFileSync(f, 'utf8').replace(/\r\n/g, '\n');
        const key = sha(text.replace(/\s+/g, ' '));
        if (seen.has(key) || looksGenerated(text)) continue;
        seen.add(key);
        const piece = text.slice(0, PER_PACKAGE_BYTES - q.taken);
        q.taken += piece.length;
        parts.push(`${piece}\n`);
        bytes += piece.length + 1;
        nFiles++;
        used.add(q.pkg);
        break; // one file per package per round
      }
      if (q.taken >= PER_PACKAGE_BYTES) q.files.length = 0;
      if (bytes >= PRETRAIN_BYTES) break;
    }
  }
  if (bytes < PRETRAIN_BYTES) throw new RangeError(`only ${bytes} bytes of code found outside the workspace's packages (need ${PRETRAIN_BYTES})`);
  const text = parts.join('');
  fs.mkdirSync(QUALITY_CACHE, { recursive: true });
  const file = path.join(QUALITY_CACHE, `pretrain-${PRETRAIN_BYTES}.txt`);
  fs.writeFileSync(file, text);
  const out: PretrainCorpus = { file, bytes: Buffer.byteLength(text), packages: used.size, files: nFiles, hash: sha(text).slice(0, 12) };
  fs.writeFileSync(meta, JSON.stringify(out));
  return out;
}

/** How often a piece must be emitted over the corpus to count as trained (issue 24: 99% of the vocabulary at least 10 times). */
export const MIN_PIECE_COUNT = 10;

/**
 * The corpus's tokenizer (harness/spmVocabulary.ts): SPM_PIECES fitted, then
 * pruned until every learned piece is emitted at least MIN_PIECE_COUNT times
 * over the corpus; built once and cached by the corpus's hash.
 */
export async function fitTokenizer(corpus: PretrainCorpus, log: (line: string) => void): Promise<string> {
  const out = path.join(QUALITY_CACHE, `spm-bpe${SPM_PIECES}-min${MIN_PIECE_COUNT}-${corpus.hash}.gguf`);
  if (fs.existsSync(out)) return out;
  const fitted = path.join(QUALITY_CACHE, `spm-bpe${SPM_PIECES}-${corpus.hash}.gguf`);
  if (!fs.existsSync(fitted)) fitSpmVocabulary(corpus.file, fitted, SPM_PIECES);
  const pruned = await pruneVocabulary(fitted, fs.readFileSync(corpus.file, 'utf8'), MIN_PIECE_COUNT, `${out}.part`);
  fs.renameSync(`${out}.part`, out);
  log(`tokenizer: ${pruned.piecesBefore} pieces fitted, ${pruned.piecesAfter} left after ${pruned.rounds} rounds of pruning the ones emitted fewer than ${MIN_PIECE_COUNT} times`);
  return out;
}

