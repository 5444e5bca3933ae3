import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Bits, rowLayout } from '../../../common/ActivationQuantizer';
import { UUID_PATTERN } from '../../../common/schema';
import { MobiError } from '../MobiError';

/** One training sequence's cached activations: where its bytes are in the data file and their sha256 (hex, first 32 digits). */
interface Entry {
  offset: number;
  bytes: number;
  sha: string;
}

/** What a batch's sequences hold per tapped layer: their rows' scale bytes and value bytes. */
interface SequenceBlocks {
  scales: Buffer[];
  values: Buffer[];
  /** Label-private: the last tapped layer's hidden states, float32 [rows][d], kept for the loss. */
  last?: Buffer;
}

/** The device store's folder of a job's cache. */
export function activationCacheDir(storeDir: string, jobId: string): string {
  if (!UUID_PATTERN.test(jobId)) throw new MobiError('NO_SUCH_JOB', 'not a job id');
  return path.join(storeDir, 'activations', jobId);
}

/**
 * The quantized activations of a job's training sequences, kept on this
 * computer's disk (never sent anywhere but as they were sent the first time),
 * so that later epochs skip the backbone's forward pass. A sequence's entry
 * holds, per tapped layer, its rows' bytes exactly as they went on the wire
 * (cut out of the first batch that held it); a later batch of other
 * sequences is put together from them, byte for byte as a forward would
 * encode it. Entries are appended to `activations.bin` and listed in
 * `index.jsonl` (a resume reads them back); each is checked by its sha256
 * when read, and a damaged or missing one makes the batch be computed again.
 * Past `budgetBytes` nothing more is kept. The folder is deleted when the
 * job ends (`remove`) and by `mobillm jobs --prune`.
 */
export class ActivationCache {
  private readonly entries = new Map<number, Entry>();
  private readonly dataFile: string;
  private readonly indexFile: string;
  private size = 0;
  /** Batches put together from the cache, and computed by a forward. */
  hits = 0;
  misses = 0;
  /** Entries found damaged (and dropped). */
  damaged = 0;

  constructor(
    readonly dir: string,
    private readonly budgetBytes: number,
    private readonly nLayers: number,
    private readonly d: number,
    private readonly bits: Bits,
    /** Label-private jobs also keep the last layer in float32 (the loss is computed here). */
    private readonly keepLast: boolean,
  ) {
    this.dataFile = path.join(dir, 'activations.bin');
    this.indexFile = path.join(dir, 'index.jsonl');
    this.readIndex();
  }

  private readIndex(): void {
    let lines: string[];
    let dataSize: number;
    try {
      lines = fs.readFileSync(this.indexFile, 'utf8').split('\n');
      dataSize = fs.statSync(this.dataFile).size;
    } catch {
      return;
    }
    for (const line of lines) {
      try {
        const e = JSON.parse(line) as Entry & { seq: number };
        if (Number.isSafeInteger(e.seq) && Number.isSafeInteger(e.offset) && Number.isSafeInteger(e.bytes) && e.offset + e.bytes <= dataSize && typeof e.sha === 'string') {
          this.entries.set(e.seq, { offset: e.offset, bytes: e.bytes, sha: e.sha });
          this.size = Math.max(this.size, e.offset + e.bytes);
        }
      } catch {
        // a line cut short by a crash: its entry is computed again
      }
    }
  }

  /** Bytes of one sequence's entry of `rows` rows. */
  private entryBytes(rows: number): number {
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    return this.nLayers * rows * (scaleBytes + valueBytes) + (this.keepLast ? rows * this.d * 4 : 0);
  }

  /**
   * Keeps the sequences of a batch just encoded: `payload` starts with one
   * quantized block per tapped layer over all `lengths` rows (batchPayload.ts);
   * `last` is the label-private float32 last layer. Sequences already kept,
   * or past the budget, are skipped.
   */
  store(seqs: number[], lengths: number[], payload: Buffer, last?: Float32Array): void {
    const rows = lengths.reduce((a, b) => a + b, 0);
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    const block = rows * (scaleBytes + valueBytes);
    let row = 0;
    seqs.forEach((seq, k) => {
      const n = lengths[k]!;
      const start = row;
      row += n;
      if (this.entries.has(seq) || this.size + this.entryBytes(n) > this.budgetBytes) return;
      const parts: Buffer[] = [];
      for (let l = 0; l < this.nLayers; l++) {
        parts.push(payload.subarray(l * block + start * scaleBytes, l * block + (start + n) * scaleBytes));
        parts.push(payload.subarray(l * block + rows * scaleBytes + start * valueBytes, l * block + rows * scaleBytes + (start + n) * valueBytes));
      }
      if (last) parts.push(Buffer.from(last.buffer, last.byteOffset + start * this.d * 4, n * this.d * 4));
      const bytes = Buffer.concat(parts);
      const entry = { offset: this.size, bytes: bytes.length, sha: createHash('sha256').update(bytes).digest('hex').slice(0, 32) };
      try {
        fs.mkdirSync(this.dir, { recursive: true });
        fs.appendFileSync(this.dataFile, bytes);
        fs.appendFileSync(this.indexFile, `${JSON.stringify({ seq, ...entry })}\n`);
      } catch {
        return; // a full disk only means this sequence is computed again later
      }
      this.entries.set(seq, entry);
      this.size += bytes.length;
    });
  }

  /** A sequence's blocks, read and checked; undefined when it is not kept or its bytes are damaged (then dropped). */
  private read(seq: number, rows: number, fd: number): SequenceBlocks | undefined {
    const e = this.entries.get(seq);
    if (!e || e.bytes !== this.entryBytes(rows)) return undefined;
    const bytes = Buffer.allocUnsafe(e.bytes);
    if (fs.readSync(fd, bytes, 0, e.bytes, e.offset) !== e.bytes || createHash('sha256').update(bytes).digest('hex').slice(0, 32) !== e.sha) {
      this.entries.delete(seq);
      this.damaged++;
      return undefined;
    }
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    const out: SequenceBlocks = { scales: [], values: [] };
    let at = 0;
    for (let l = 0; l < this.nLayers; l++) {
      out.scales.push(bytes.subarray(at, (at += rows * scaleBytes)));
      out.values.push(bytes.subarray(at, (at += rows * valueBytes)));
    }
    if (this.keepLast) out.last = bytes.subarray(at, at + rows * this.d * 4);
    return out;
  }

  /**
   * The tapped layers' quantized blocks of a batch of sequences `seqs` with
   * `lengths` rows, put together from the cache (the payload's layer part,
   * byte for byte as encodeLayersPayload makes it), and the label-private
   * last layer; undefined when any of its sequences is not (validly) kept.
   */
  batch(seqs: number[], lengths: number[]): { layers: Buffer; last?: Float32Array } | undefined {
    if (!seqs.every((s) => this.entries.has(s))) {
      this.misses++;
      return undefined;
    }
    let fd: number;
    try {
      fd = fs.openSync(this.dataFile, 'r');
    } catch {
      this.misses++;
      return undefined;
    }
    try {
      const blocks = seqs.map((s, k) => this.read(s, lengths[k]!, fd));
      if (blocks.some((b) => b === undefined)) {
        this.misses++;
        return undefined;
      }
      const parts = Array.from({ length: this.nLayers }, (_, l) => [...blocks.map((b) => b!.scales[l]!), ...blocks.map((b) => b!.values[l]!)]).flat();
      this.hits++;
      const last = this.keepLast ? Buffer.concat(blocks.map((b) => b!.last!)) : undefined;
      return { layers: Buffer.concat(parts), last: last ? new Float32Array(last.buffer.slice(last.byteOffset, last.byteOffset + last.byteLength)) : undefined };
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Bytes kept on disk. */
  get bytes(): number {
    return this.size;
  }

  /** Deletes the cache's folder. */
  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Deletes every job's activation cache in the device store; returns how many and their bytes. */
export function pruneActivationCaches(storeDir: string): { caches: number; bytes: number } {
  const root = path.join(storeDir, 'activations');
  let names: string[];
  try {
    names = fs.readdirSync(root).filter((n) => UUID_PATTERN.test(n));
  } catch {
    return { caches: 0, bytes: 0 };
  }
  let bytes = 0;
  for (const n of names) {
    for (const f of ['activations.bin', 'index.jsonl']) {
      try {
        bytes += fs.statSync(path.join(root, n, f)).size;
      } catch {
        // a cache that never stored anything
      }
    }
    fs.rmSync(path.join(root, n), { recursive: true, force: true });
  }
  return { caches: names.length, bytes };
}
