import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import MiniSearch, { Options } from 'minisearch';
import { yieldToEventLoop } from '../../../common/sliced';
import { writeFileAtomicSliced } from '../../../common/atomicWrite';
import { isMinified, MAX_FILE_BYTES, scanWorkspaceAsync } from './scanWorkspace';
import { WorkspaceRules } from './WorkspaceRules';
import { codeTerms } from './codeTerms';

/** Lines of one window of a file, and how far the next window starts after it. */
export const WINDOW_LINES = 24;
export const WINDOW_STRIDE = 12;
/** Bytes of files the index holds at most (each window's text is kept): past it, files are left out. */
export const MAX_INDEXED_BYTES = 16 * 1024 * 1024;
/** Changes the persisted form: an index of another version is built again. */
const INDEX_VERSION = 2;
/** Files handled between two pauses for the event loop (indexing, saving, loading). */
const FILES_PER_SLICE = 4;

/** A window of a file: its lines [start, start + WINDOW_LINES). */
interface Window {
  id: string;
  path: string;
  /** First line, 0-based. */
  start: number;
  text: string;
}

/** A window found for a query, best first. */
export interface Snippet {
  path: string;
  startLine: number;
  text: string;
  score: number;
}

const SEARCH_OPTIONS: Options<Window> = { fields: ['text'], idField: 'id', tokenize: codeTerms, processTerm: (t: string) => t };

/**
 * A BM25 index of the workspace's files on this computer, for completions'
 * context: each file the scan would learn from (its rules: .gitignore,
 * secrets, lock files, binaries, minified and large files), cut into
 * windows of WINDOW_LINES lines every WINDOW_STRIDE lines, scored by
 * MiniSearch (BM25+). Follows edits (setFile on save), deletions and renames;
 * kept in the device store (`<store>/context/<workspace hash>.json`) and
 * bounded by MAX_INDEXED_BYTES. Nothing of it is sent anywhere.
 */
export class WorkspaceIndex {
  private readonly search = new MiniSearch<Window>(SEARCH_OPTIONS);
  private readonly windows = new Map<string, Window>();
  /** Per file: the sha256 of its indexed text, its windows' ids and its bytes. */
  private readonly files = new Map<string, { sha256: string; ids: string[]; bytes: number }>();
  private indexedBytes = 0;
  private readonly rules: WorkspaceRules;
  private saving: NodeJS.Timeout | undefined;

  private constructor(
    readonly root: string,
    private readonly file: string,
    private readonly options: { maxBytes: number; maxFileBytes: number; exclude: string[] },
  ) {
    this.rules = new WorkspaceRules(root, options.exclude);
  }

  /** Where the index of `root` is kept in the device store `storeDir`. */
  static fileFor(storeDir: string, root: string): string {
    const ws = createHash('sha256').update(path.resolve(root)).digest('hex').slice(0, 16);
    return path.join(storeDir, 'context', `${ws}.json`);
  }

  /**
   * The index of `root`: the stored one brought up to date with a scan of the
   * workspace (files changed, added or gone since), or built from the scan.
   */
  static async open(root: string, storeDir: string, options: { maxBytes?: number; maxFileBytes?: number; exclude?: string[] } = {}): Promise<WorkspaceIndex> {
    const index = new WorkspaceIndex(path.resolve(root), WorkspaceIndex.fileFor(storeDir, root), {
      maxBytes: options.maxBytes ?? MAX_INDEXED_BYTES, maxFileBytes: options.maxFileBytes ?? MAX_FILE_BYTES, exclude: options.exclude ?? [],
    });
    await index.load();
    const scan = await scanWorkspaceAsync(root, { exclude: options.exclude, maxFileBytes: index.options.maxFileBytes, maxTotalBytes: index.options.maxBytes });
    const seen = new Set<string>();
    let changed = false;
    for (const [i, f] of scan.files.entries()) {
      seen.add(f.path);
      if (index.files.get(f.path)?.sha256 !== sha256(f.text)) changed = index.setFile(f.path, f.text) || changed;
      if (i % FILES_PER_SLICE === FILES_PER_SLICE - 1) await yieldToEventLoop(); // a large workspace does not hold the event loop
    }
    for (const rel of [...index.files.keys()]) if (!seen.has(rel)) changed = index.removeFile(rel) || changed;
    if (changed) await index.save();
    return index;
  }

  /**
   * An index of exactly `files` (scanned already), in memory only: save() keeps
   * nothing. Training context uses it over a job's training files, so that no
   * held-out file's text is ever trained on.
   */
  static async ofFiles(root: string, files: { path: string; text: string }[]): Promise<WorkspaceIndex> {
    const index = new WorkspaceIndex(path.resolve(root), '', { maxBytes: Number.MAX_SAFE_INTEGER, maxFileBytes: Number.MAX_SAFE_INTEGER, exclude: [] });
    for (const [i, f] of files.entries()) {
      index.setFile(f.path, f.text);
      if (i % FILES_PER_SLICE === FILES_PER_SLICE - 1) await yieldToEventLoop();
    }
    return index;
  }

  /** Files indexed now. */
  get fileCount(): number {
    return this.files.size;
  }

  /** Whether `rel` is indexed. */
  has(rel: string): boolean {
    return this.files.has(rel);
  }

  /**
   * The file `rel` now holds `text` (saved or created): its windows replace
   * the old ones, or it leaves the index when the scan's rules leave it out
   * (ignored, secret, binary, minified, too large, past the index's bound).
   * Returns whether the index changed. In memory; saveSoon() writes it.
   */
  setFile(rel: string, text: string): boolean {
    const had = this.removeFile(rel);
    const bytes = Buffer.byteLength(text, 'utf8');
    const excluded = this.rules.skipReason(rel) !== undefined || bytes === 0 || bytes > this.options.maxFileBytes
      || this.indexedBytes + bytes > this.options.maxBytes || text.slice(0, 8192).includes('\0') || isMinified(rel, text);
    if (excluded) return had;
    const lines = text.split('\n');
    const ids: string[] = [];
    for (let start = 0; start === 0 || start + WINDOW_STRIDE < lines.length; start += WINDOW_STRIDE) {
      const w: Window = { id: `${rel}#${start}`, path: rel, start, text: lines.slice(start, start + WINDOW_LINES).join('\n') };
      this.windows.set(w.id, w);
      this.search.add(w);
      ids.push(w.id);
    }
    this.files.set(rel, { sha256: sha256(text), ids, bytes });
    this.indexedBytes += bytes;
    return true;
  }

  /** The file `rel` is gone (deleted, or renamed away). Returns whether it was indexed. */
  removeFile(rel: string): boolean {
    const f = this.files.get(rel);
    if (!f) return false;
    for (const id of f.ids) {
      this.search.discard(id);
      this.windows.delete(id);
    }
    this.files.delete(rel);
    this.indexedBytes -= f.bytes;
    return true;
  }

  /** A .gitignore changed: its rules are read again, and indexed files they now leave out leave the index (files they let in come at the next opening or save). */
  rulesChanged(): void {
    this.rules.forget();
    for (const rel of [...this.files.keys()]) if (this.rules.skipReason(rel) !== undefined) this.removeFile(rel);
  }

  /**
   * The windows that best match `query` by BM25, best first, at most `limit`,
   * none from `excludePath` (the file being completed) and none overlapping a
   * better one of the same file.
   */
  find(query: string, limit: number, excludePath?: string): Snippet[] {
    if (codeTerms(query).length === 0) return [];
    const out: Snippet[] = [];
    for (const r of this.search.search(query, { combineWith: 'OR' })) {
      const w = this.windows.get(String(r.id));
      if (!w || w.path === excludePath) continue;
      if (out.some((s) => s.path === w.path && Math.abs(s.startLine - w.start) < WINDOW_LINES)) continue;
      out.push({ path: w.path, startLine: w.start, text: w.text, score: r.score });
      if (out.length >= limit) break;
    }
    return out;
  }

  /** Writes the index to the device store within a few seconds (saves after many edits are one write). */
  saveSoon(delayMs = 5000): void {
    if (this.saving) return;
    this.saving = setTimeout(() => {
      this.saving = undefined;
      this.save().catch(() => undefined); // a store that cannot take it keeps the previous index; the next save tries again
    }, delayMs);
    this.saving.unref();
  }

  /** Writes the index now if a save is pending (saveSoon). */
  async flush(): Promise<void> {
    if (this.saving) await this.save();
  }

  /**
   * Writes the index now, atomically: a first line naming its version and
   * root, then one JSON line per file (its hash, size and windows), built and
   * written with the event loop free every FILES_PER_SLICE files. The BM25
   * tables are not stored: load() builds them again in slices, which costs
   * about what serializing them would (MiniSearch's toJSON held the event
   * loop 0.2 s for this repository).
   */
  async save(): Promise<void> {
    if (this.saving) clearTimeout(this.saving);
    this.saving = undefined;
    if (!this.file) return; // in memory only (ofFiles)
    const lines = [JSON.stringify({ version: INDEX_VERSION, root: this.root })];
    for (const [i, [rel, f]] of [...this.files].entries()) {
      lines.push(JSON.stringify({ path: rel, sha256: f.sha256, bytes: f.bytes, windows: f.ids.map((id) => this.windows.get(id)!) }));
      if (i % FILES_PER_SLICE === FILES_PER_SLICE - 1) await yieldToEventLoop();
    }
    await writeFileAtomicSliced(this.file, Buffer.from(`${lines.join('\n')}\n`, 'utf8'));
  }

  /** The stored index, when there is one of this version for this root (a damaged one is ignored: built again from the scan). */
  private async load(): Promise<void> {
    let lines: string[];
    try {
      lines = (await fs.promises.readFile(this.file, 'utf8')).split('\n').filter(Boolean);
      const head = JSON.parse(lines[0] ?? '') as { version?: unknown; root?: unknown };
      if (head.version !== INDEX_VERSION || head.root !== this.root) return;
    } catch {
      return;
    }
    const windows: Window[] = [];
    try {
      for (const [i, line] of lines.slice(1).entries()) {
        const f = JSON.parse(line) as { path: string; sha256: string; bytes: number; windows: Window[] };
        this.files.set(f.path, { sha256: f.sha256, ids: f.windows.map((w) => w.id), bytes: f.bytes });
        this.indexedBytes += f.bytes;
        windows.push(...f.windows);
        if (i % FILES_PER_SLICE === FILES_PER_SLICE - 1) await yieldToEventLoop();
      }
    } catch {
      this.files.clear();
      this.indexedBytes = 0;
      return;
    }
    for (const w of windows) this.windows.set(w.id, w);
    await this.search.addAllAsync(windows, { chunkSize: 64 });
  }
}

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}
