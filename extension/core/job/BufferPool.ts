/**
 * Byte buffers a job reuses for each batch: its captured layers, its payload,
 * its label-private last layer and join. Those live across a step (the next batch is ready while this one
 * waits for credit, its side output and its loss), so V8 moves them to its old
 * generation, where a finished one stays until a full collection; V8 starts
 * one only after external memory has grown some 64 MB, which was the whole
 * of the device's garbage at its peak. Reused, they are not garbage at all.
 *
 * A buffer taken is the caller's until given back; one never given back (a
 * cancelled batch) is collected as any other.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly owned = new WeakSet<ArrayBuffer>();

  /** `maxFree`: buffers kept for reuse (a capture's layers, a batch's payload and join); past it the smallest given back is let go. */
  constructor(private readonly maxFree = 64) {}

  /** `bytes` bytes: the smallest free buffer that holds them, or a new one. */
  take(bytes: number): Buffer {
    return Buffer.from(this.takeBuffer(bytes), 0, bytes);
  }

  /** `n` floats, as take; a new buffer holds `room` floats (at least n), so that later, larger requests fit it. */
  takeFloats(n: number, room = n): Float32Array<ArrayBuffer> {
    return new Float32Array(this.takeBuffer(n * 4, room * 4), 0, n);
  }

  private takeBuffer(bytes: number, room = bytes): ArrayBuffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const n = this.free[i]!.byteLength;
      if (n >= bytes && (best < 0 || n < this.free[best]!.byteLength)) best = i;
    }
    const ab = best >= 0 ? this.free.splice(best, 1)[0]! : new ArrayBuffer(Math.max(bytes, room));
    this.owned.add(ab);
    return ab;
  }

  /** Gives back a view of a buffer taken here (anything else, or one already given back, is ignored). */
  give(view: ArrayBufferView | undefined): void {
    const ab = view?.buffer;
    if (!(ab instanceof ArrayBuffer) || !this.owned.has(ab) || this.free.includes(ab)) return;
    this.free.push(ab);
    if (this.free.length > this.maxFree) {
      let smallest = 0;
      for (let i = 1; i < this.free.length; i++) if (this.free[i]!.byteLength < this.free[smallest]!.byteLength) smallest = i;
      this.free.splice(smallest, 1);
    }
  }

  /** Buffers waiting to be reused. */
  get freeCount(): number {
    return this.free.length;
  }
}
