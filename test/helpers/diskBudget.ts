import type * as fs from 'node:fs';

// The module object itself (the namespace import above is read-only): patching it is seen by every importer.
export const nodeFs = require('node:fs') as { writeSync: typeof fs.writeSync };

/** Runs `body` (sync, or until its promise settles) while the disk takes at most `budget` more bytes (as a full disk does: short writes, then none). */
export function withDiskBudget<T>(budget: number, body: () => T): T {
  const real = nodeFs.writeSync;
  let left = budget;
  (nodeFs as { writeSync: unknown }).writeSync = (fd: number, data: Uint8Array, offset?: number, length?: number, position?: number | null): number => {
    const want = Math.min(length ?? data.length - (offset ?? 0), Math.max(0, left));
    if (want === 0) return 0;
    left -= want;
    return real(fd, data, offset ?? 0, want, position ?? null);
  };
  const restore = (): void => {
    (nodeFs as { writeSync: unknown }).writeSync = real;
  };
  let result: T;
  try {
    result = body();
  } catch (err) {
    restore();
    throw err;
  }
  if (result instanceof Promise) return result.finally(restore) as T;
  restore();
  return result;
}
