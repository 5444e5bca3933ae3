import * as fs from 'node:fs';
import { SCAN_SETTINGS } from '../../../common/jobSettings';
import * as path from 'node:path';
import ignore, { Ignore } from 'ignore';
import { MobiError } from '../MobiError';
import { runSteps, runStepsSliced } from '../../../common/sliced';

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
export const LOCK_FILES = new Set(['package-lock.json', 'npm-shrinkwrap.json', 'yarn.lock', 'pnpm-lock.yaml', 'bun.lockb', 'Cargo.lock', 'poetry.lock', 'Pipfile.lock', 'Gemfile.lock', 'composer.lock', 'go.sum', 'flake.lock']);
export const SECRET_PATTERNS = ignore().add(['.env', '.env.*', '*.pem', '*.key', '*.p12', '*.pfx', '*.jks', '*.keystore', 'id_rsa*', 'id_dsa*', 'id_ecdsa*', 'id_ed25519*', '.npmrc', '.netrc', '.pypirc', '.git-credentials', 'credentials', 'credentials.*', '*.kdbx', 'secrets.*', '.htpasswd']);

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

export function isMinified(rel: string, text: string): boolean {
  if (/\.min\.(js|css|mjs)$/.test(rel)) return true;
  const lines = text.split('\n').length;
  return text.length > 2000 && text.length / lines > MINIFIED_LINE_CHARS;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Opens without following a link in the last component, and without waiting on a FIFO. */
const OPEN_FLAGS = fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0) | (fs.constants.O_NONBLOCK ?? 0);
/** Whether this system names the file behind a descriptor (Linux: /proc/self/fd). */
const OPENED_PATHS = process.platform === 'linux' && fs.existsSync('/proc/self/fd');

/**
 * The bytes of the regular file `abs` that lstat found as `before`, read
 * through one descriptor opened without following links: 'changed' when
 * what was opened is not that file (a link swapped in for it or for a folder
 * above it since, its inode differs or, where the system says, it lies
 * outside the workspace at `expected`), or when it changed while read;
 * 'unreadable' when it cannot be opened or read.
 */
function readUnlinked(abs: string, before: fs.Stats, expected: string | undefined): Buffer | 'changed' | 'unreadable' {
  let fd: number;
  try {
    fd = fs.openSync(abs, OPEN_FLAGS);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ELOOP' ? 'changed' : 'unreadable';
  }
  try {
    const opened = fs.fstatSync(fd);
    if (!opened.isFile() || opened.ino !== before.ino || opened.dev !== before.dev) return 'changed';
    if (expected !== undefined && fs.readlinkSync(`/proc/self/fd/${fd}`) !== expected) return 'changed';
    const buf = Buffer.alloc(opened.size);
    let at = 0;
    while (at < buf.length) {
      const n = fs.readSync(fd, buf, at, buf.length - at, at);
      if (n === 0) break;
      at += n;
    }
    const after = fs.fstatSync(fd);
    return at !== buf.length || after.mtimeMs !== before.mtimeMs || after.size !== buf.length ? 'changed' : buf;
  } catch {
    return 'unreadable';
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Lists the workspace's source files to learn from, reading each once, and
 * says what it left out and why. Respects .gitignore files at every level.
 * Never follows symbolic links, also one swapped in during the scan: each
 * file is opened without following links and read only when what was
 * opened is the file listed (readUnlinked).
 */
export function scanWorkspace(root: string, options: ScanOptions = {}): ScanReport {
  return runSteps(scanSteps(root, options));
}

/** scanWorkspace with the event loop free after each file read (a host thread keeps answering). */
export function scanWorkspaceAsync(root: string, options: ScanOptions = {}): Promise<ScanReport> {
  return runStepsSliced(scanSteps(root, options));
}

function* scanSteps(root: string, options: ScanOptions): Generator<void, ScanReport> {
  let rootStat: fs.Stats;
  try {
    rootStat = fs.statSync(root);
  } catch (err) {
    throw new MobiError('EMPTY_WORKSPACE', `The workspace folder ${root} does not exist.`, { cause: err });
  }
  if (!rootStat.isDirectory()) throw new MobiError('EMPTY_WORKSPACE', `${root} is not a folder.`);
  // Where each file must turn out to be once opened (checked where /proc/self/fd names what a descriptor opened).
  const rootReal = OPENED_PATHS ? fs.realpathSync(root) : undefined;
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

  function* walk(dirRel: string, rules: { base: string; ig: Ignore }[]): Generator<void, void> {
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
        yield* walk(rel, rules);
        continue;
      }
      if (!e.isFile()) continue;
      const abs = path.join(root, rel);
      let before: fs.Stats;
      try {
        before = fs.lstatSync(abs);
      } catch {
        skip('unreadable', 0);
        continue;
      }
      if (!before.isFile()) {
        skip(before.isSymbolicLink() ? 'link' : 'changed', 0); // replaced since the folder was listed
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
        const buf = readUnlinked(abs, before, rootReal === undefined ? undefined : path.join(rootReal, rel));
        yield; // a pause after each file read
        if (typeof buf === 'string') {
          skip(buf, size);
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
  }
  yield* walk('', []);
  return report;
}

/** One line per reason, for people: "12 files (30.1 KB) skipped: binary". */
export function describeSkipped(report: ScanReport): string[] {
  return Object.entries(report.skipped).map(([reason, s]) => `${s!.files} file(s) (${(s!.bytes / 1024).toFixed(1)} KB) skipped: ${reason}`);
}
