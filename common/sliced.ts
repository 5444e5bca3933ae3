import { createHash } from 'node:crypto';

/** Bytes handled between two yields to the event loop (about 20-40 ms of hashing or copying). */
export const SLICE_BYTES = 16 * 1024 * 1024;

/** Lets the event loop run (timers, sockets) before the next slice of long work. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Long work written once as a generator that yields where it may pause, run
 * two ways: at once (runSteps), or with the event loop free at every pause
 * (runStepsSliced) where a thread must keep answering. Both give the same result.
 */
export function runSteps<T>(steps: Generator<void, T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

export async function runStepsSliced<T>(steps: Generator<void, T>): Promise<T> {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    await yieldToEventLoop();
  }
}

/** sha256 of `bytes`, SLICE_BYTES at a time with the event loop free between slices. */
export async function sha256Sliced(bytes: Uint8Array): Promise<Buffer> {
  const hash = createHash('sha256');
  for (let at = 0; at < bytes.length; at += SLICE_BYTES) {
    hash.update(bytes.subarray(at, Math.min(bytes.length, at + SLICE_BYTES)));
    if (at + SLICE_BYTES < bytes.length) await yieldToEventLoop();
  }
  return hash.digest();
}
