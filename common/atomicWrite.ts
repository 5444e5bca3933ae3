import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Writes a file so that a crash leaves either the old or the new content,
 * never a mix: temp file in the same folder, fsync, rename, fsync the folder.
 * Used for checkpoints, adapters, user records and device-side stores.
 */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  writeFileAtomicWith(file, (fd) => fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data));
}

/** The same, for content written piece by piece into the open file descriptor (large files). */
export function writeFileAtomicWith(file: string, write: (fd: number) => void): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Date.now()}`);
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    write(fd);
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}
