import * as fs from 'node:fs';
import * as path from 'node:path';
import { SLICE_BYTES, yieldToEventLoop } from './sliced';

/** A write that could not be completed (a full disk, a short write): the previous file is untouched. */
export class AtomicWriteError extends Error {
  constructor(readonly file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AtomicWriteError';
  }
}

/**
 * Writes all of `data` at `position` (or at the file's offset): a short write
 * is continued, and a write that makes no progress (a full disk) throws.
 */
export function writeAll(fd: number, data: Uint8Array, position?: number): void {
  let done = 0;
  while (done < data.length) {
    const n = fs.writeSync(fd, data, done, data.length - done, position === undefined ? null : position + done);
    if (!(n > 0)) throw new AtomicWriteError('', `the disk accepted ${done} of ${data.length} bytes (is it full?)`);
    done += n;
  }
}

/**
 * Writes a file so that a crash or a full disk leaves either the old or the
 * new content, never a mix and never a short file: temp file in the same
 * folder, every byte written, fsync, its size checked, rename, fsync the
 * folder. Used for checkpoints, adapters, user records and device-side stores.
 */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  writeFileAtomicWith(file, (fd) => writeAll(fd, bytes), bytes.length);
}

/**
 * The same, for content written piece by piece into the open file descriptor
 * (large files; write with writeAll). With `expectedBytes`, the file's size is
 * checked before it replaces the old one.
 */
export function writeFileAtomicWith(file: string, write: (fd: number) => void, expectedBytes?: number): void {
  const t = openTemporary(file);
  try {
    write(t.fd);
  } catch (err) {
    abandon(t, err);
  }
  commit(t, expectedBytes);
}

/**
 * writeFileAtomic in slices: SLICE_BYTES are written at a time, with the
 * event loop free between them (large checkpoints and adapters on a server).
 */
export async function writeFileAtomicSliced(file: string, bytes: Uint8Array): Promise<void> {
  const t = openTemporary(file);
  try {
    for (let at = 0; at < bytes.length; at += SLICE_BYTES) {
      writeAll(t.fd, bytes.subarray(at, Math.min(bytes.length, at + SLICE_BYTES)), at);
      await yieldToEventLoop();
    }
    // The long flush to the disk on libuv's thread pool; commit's own fsync then has little left to do.
    await new Promise<void>((resolve, reject) => fs.fsync(t.fd, (err) => (err ? reject(err) : resolve())));
  } catch (err) {
    abandon(t, err);
  }
  commit(t, bytes.length);
}

interface Temporary {
  file: string;
  dir: string;
  tmp: string;
  fd: number;
}

/** The temporary file a write goes to first, beside `file`. */
function openTemporary(file: string): Temporary {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Date.now()}`);
  return { file, dir, tmp, fd: fs.openSync(tmp, 'w', 0o600) };
}

/** Deletes the temporary and throws the write's failure as an AtomicWriteError naming the file. */
function abandon(t: Temporary, err: unknown): never {
  fs.closeSync(t.fd);
  fs.rmSync(t.tmp, { force: true });
  throw err instanceof AtomicWriteError ? new AtomicWriteError(t.file, `could not write ${path.basename(t.file)}: ${err.message}`, { cause: err }) : err;
}

/** fsync, size check, then the rename that replaces the old file and the folder's fsync. */
function commit(t: Temporary, expectedBytes?: number): void {
  try {
    fs.fsyncSync(t.fd);
    const size = fs.fstatSync(t.fd).size;
    if (expectedBytes !== undefined && size !== expectedBytes) throw new AtomicWriteError(t.file, `wrote ${size} of ${expectedBytes} bytes`);
  } catch (err) {
    abandon(t, err);
  }
  fs.closeSync(t.fd);
  fs.renameSync(t.tmp, t.file);
  syncFolder(t.dir);
}

/**
 * Makes a folder's entries (a rename) durable. Not on Windows, which has no
 * fsync of a folder (it fails with EPERM; NTFS journals the rename itself).
 */
export function syncFolder(dir: string): void {
  if (process.platform === 'win32') return;
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}

/** The name writeFileAtomicWith gives its temporary file: `.<name>.tmp-<pid>-<ms>`. */
const TEMPORARY = /^\..+\.tmp-(\d+)-\d+$/;

/**
 * Deletes the temporaries of atomic writes below `dir` that no live process
 * is writing (left by a process killed mid-write). Returns how many it
 * deleted. Run at start-up; a folder it cannot read is skipped.
 */
export function removeStaleTemporaries(dir: string): number {
  let removed = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) removed += removeStaleTemporaries(p);
    const m = TEMPORARY.exec(e.name);
    if (!e.isFile() || !m || processAlive(Number(m[1]))) continue;
    fs.rmSync(p, { force: true });
    removed++;
  }
  return removed;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
