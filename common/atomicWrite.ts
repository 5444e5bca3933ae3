import * as fs from 'node:fs';
import * as path from 'node:path';

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
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Date.now()}`);
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    write(fd);
    fs.fsyncSync(fd);
    const size = fs.fstatSync(fd).size;
    if (expectedBytes !== undefined && size !== expectedBytes) throw new AtomicWriteError(file, `wrote ${size} of ${expectedBytes} bytes`);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err instanceof AtomicWriteError ? new AtomicWriteError(file, `could not write ${path.basename(file)}: ${err.message}`, { cause: err }) : err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  syncFolder(dir);
}

/** Makes a folder's entries (a rename) durable. */
export function syncFolder(dir: string): void {
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
