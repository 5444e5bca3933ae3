import * as fs from 'node:fs';
import { SCAN_SETTINGS } from '../../../common/jobSettings';
import * as path from 'node:path';
import ignore, { Ignore } from 'ignore';
import { MobiError } from '../MobiError';

/** Options of the workspace scan. */
export interface ScanOptions {
  /** Only files matching one of these gitignore-style patterns. Default: all files. */
  include?: string[];
  /** Never these (gitignore-style patterns), on top of .gitignore and the defaults. */
  exclude?: string[];
  /** Skip files larger than this. Default MAX_FILE_BYTES. */
  maxFileBytes?: number;
  /** Stop including files past this total. Default MAX_TOTAL_BYTES. */
  maxTotalBytes?: number;
  /** Called before each candidate file is read (progress for long scans). */
  onFile?: (relativePath: string) => void;
}

export const MAX_FILE_BYTES: number = SCAN_SETTINGS.maxFileBytes.default;
export const MAX_TOTAL_BYTES = 64 * 1024 * 1024;
/** Bytes looked at for binary content (NUL bytes). */
const SNIFF_BYTES = 8192;
/** A file whose average line is longer than this is treated as minified. */
const MINIFIED_LINE_CHARS = 400;

export const DEFAULT_EXCLUDED_DIRS = ['.git', 'node_modules', 'dist', 'build', 'out', 'target', '.next', '.nuxt', 'coverage', '__pycache__', '.venv', 'venv', '.mobillm', '.vscode-test', '.cache', '.gradle', '.idea', 'vendor'];
const LOCK_FILES = new Set(['package-lock.json', 'npm-shrinkwrap.json', 'yarn.lock', 'pnpm-lock.yaml', 'bun.lockb', 'Cargo.lock', 'poetry.lock', 'Pipfile.lock', 'Gemfile.lock', 'composer.lock', 'go.sum', 'flake.lock']);
const SECRET_PATTERNS = ignore().add(['.env', '.env.*', '*.pem', '*.key', '*.p12', '*.pfx', '*.jks', '*.keystore', 'id_rsa*', 'id_dsa*', 'id_ecdsa*', 'id_ed25519*', '.npmrc', '.netrc', '.pypirc', '.git-credentials', 'credentials', 'credentials.*', '*.kdbx', 'secrets.*', '.htpasswd']);

export type SkipReason = 'gitignore' | 'excluded' | 'not-included' | 'binary' | 'too-large' | 'secret' | 'lock-file' | 'minified' | 'unreadable' | 'empty' | 'changed' | 'over-budget' | 'link';

export interface ScannedFile {
  /** Path relative to the workspace root, with forward slashes. */
  path: string;
  bytes: number;
  /** The content as read during the scan (one consistent snapshot). */
  text: string;
}

export interface ScanReport {
  root: string;
  files: ScannedFile[];
  includedBytes: number;
  skipped: Partial<Record<SkipReason, { files: number; bytes: number }>>;
}

function isMinified(rel: string, text: string): boolean {
  if (/\.min\.(js|css|mjs)$/.test(rel)) return true;
  const lines = text.split('\n').length;
  return text.length > 2000 && text.length / lines > MINIFIED_LINE_CHARS;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Lists the workspace's source files to learn from, reading each once, and
 * says what it left out and why. Respects .gitignore files at every level.
 * Never follows symbolic links.
 */
export function scanWorkspace(root: string, options: ScanOptions = {}): ScanReport {
  let rootStat: fs.Stats;
  try {
    rootStat = fs.statSync(root);
  } catch (err) {
    throw new MobiError('EMPTY_WORKSPACE', `The workspace folder ${root} does not exist.`, { cause: err });
  }
  if (!rootStat.isDirectory()) throw new MobiError('EMPTY_WORKSPACE', `${root} is not a folder.`);
  const maxFile = options.maxFileBytes ?? MAX_FILE_BYTES;
  const maxTotal = options.maxTotalBytes ?? MAX_TOTAL_BYTES;
  const include = options.include && options.include.length > 0 ? ignore().add(options.include) : undefined;
  const exclude = ignore().add(options.exclude ?? []);
  const report: ScanReport = { root, files: [], includedBytes: 0, skipped: {} };
  const skip = (reason: SkipReason, bytes: number): void => {
    const s = (report.skipped[reason] ??= { files: 0, bytes: 0 });
    s.files++;
    s.bytes += bytes;
  };

  const walk = (dirRel: string, rules: { base: string; ig: Ignore }[]): void => {
    const dirAbs = path.join(root, dirRel);
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dirAbs, { withFileTypes: true });
    } catch {
      skip('unreadable', 0);
      return;
    }
    const gi = entries.find((e) => e.isFile() && e.name === '.gitignore');
    if (gi) {
      try {
        rules = [...rules, { base: dirRel, ig: ignore().add(fs.readFileSync(path.join(dirAbs, '.gitignore'), 'utf8')) }];
      } catch {
        skip('unreadable', 0);
      }
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      const rel = dirRel ? `${dirRel}/${e.name}` : e.name;
      const isDir = e.isDirectory();
      const relForMatch = isDir ? `${rel}/` : rel;
      const ignoredByGit = rules.some((r) => r.ig.ignores(r.base ? path.posix.relative(r.base, relForMatch) + (isDir ? '/' : '') : relForMatch));
      if (e.isSymbolicLink()) {
        skip('link', 0);
        continue;
      }
      if (isDir) {
        if (DEFAULT_EXCLUDED_DIRS.includes(e.name) || ignoredByGit || exclude.ignores(relForMatch)) continue;
        walk(rel, rules);
        continue;
      }
      if (!e.isFile()) continue;
      const abs = path.join(root, rel);
      let before: fs.Stats;
      try {
        before = fs.statSync(abs);
      } catch {
        skip('unreadable', 0);
        continue;
      }
      const size = before.size;
      if (ignoredByGit) skip('gitignore', size);
      else if (exclude.ignores(rel)) skip('excluded', size);
      else if (SECRET_PATTERNS.ignores(e.name) || SECRET_PATTERNS.ignores(rel)) skip('secret', size);
      else if (LOCK_FILES.has(e.name)) skip('lock-file', size);
      else if (include && !include.ignores(rel)) skip('not-included', size);
      else if (size === 0) skip('empty', 0);
      else if (size > maxFile) skip('too-large', size);
      else if (report.includedBytes + size > maxTotal) skip('over-budget', size);
      else {
        options.onFile?.(rel);
        let buf: Buffer;
        try {
          buf = fs.readFileSync(abs);
        } catch {
          skip('unreadable', size);
          continue;
        }
        let after: fs.Stats | undefined;
        try {
          after = fs.statSync(abs);
        } catch {
          after = undefined;
        }
        if (!after || after.mtimeMs !== before.mtimeMs || after.size !== buf.length) {
          skip('changed', size);
          continue;
        }
        if (buf.subarray(0, SNIFF_BYTES).includes(0)) {
          skip('binary', size);
          continue;
        }
        let text: string;
        try {
          text = utf8.decode(buf);
        } catch {
          skip('binary', size);
          continue;
        }
        if (isMinified(rel, text)) {
          skip('minified', size);
          continue;
        }
        report.files.push({ path: rel, bytes: size, text });
        report.includedBytes += size;
      }
    }
  };
  walk('', []);
  return report;
}

/** One line per reason, for people: "12 files (30.1 KB) skipped: binary". */
export function describeSkipped(report: ScanReport): string[] {
  return Object.entries(report.skipped).map(([reason, s]) => `${s!.files} file(s) (${(s!.bytes / 1024).toFixed(1)} KB) skipped: ${reason}`);
}
