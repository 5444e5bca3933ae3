import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Bits, rowLayout } from '../../../common/ActivationQuantizer';
import type { BufferPool } from './BufferPool';

/** What decides a sequence's cached activations besides its tokens: the model, the tapped layers, the bits and the mode. */
export interface ActivationCacheKey {
  fingerprint: string;
  tappedLayers: number[];
  bits: Bits;
  /** Label-private jobs also keep the last tapped layer in float32 (the loss is computed here). */
  keepLast: boolean;
}

/** One sequence's cached activations per tapped layer: its rows' scale bytes and value bytes, and (label-private) the last layer in float32. */
export interface SequenceBlocks {
  scales: Buffer[];
  values: Buffer[];
  last?: Buffer;
}

interface Entry {
  bytes: number;
  /** Being written: counted against the budget, not yet readable. */
  writing?: boolean;
  /** Milliseconds since the epoch of its last use: the least recently used go first. */
  used: number;
}

/** Bytes before an entry's data: the first 16 bytes of its sha256. */
const CHECK_BYTES = 16;
const SUFFIX = '.act';

/** The device store's folder of the activations of every job with the same model, tapped layers, bits and mode. */
export function activationCacheDir(storeDir: string, key: ActivationCacheKey): string {
  const id = createHash('sha256').update(JSON.stringify([key.fingerprint, key.tappedLayers, key.bits, key.keepLast])).digest('hex').slice(0, 24);
  return path.join(storeDir, 'activations', id);
}

/** The name of a sequence's entry: a hash of the tokens the backbone runs over. */
export function sequenceKey(input: Int32Array): string {
  return createHash('sha256').update(new Uint8Array(input.buffer, input.byteOffset, input.byteLength)).digest('hex').slice(0, 40);
}

/**
 * The quantized activations of sequences the backbone has run over, kept on
 * this computer's disk (never sent anywhere but as they were sent the first
 * time), so that later epochs, later jobs and updates skip the forward pass
 * for sequences they have seen. An entry is named by its tokens' hash and
 * holds, per tapped layer, its rows' bytes exactly as they went on the wire;
 * a batch is put together from them byte for byte as a forward would encode
 * it. Every entry is written whole (a temporary file, then a rename) and
 * checked by its sha256 when read; a damaged one is deleted and computed
 * again. Past `budgetBytes` the least recently used entries are deleted.
 * `mobillm jobs --prune` deletes it all.
 */
export class ActivationCache {
  private readonly entries = new Map<string, Entry>();
  private size = 0;
  /** Batches put together from the cache alone, and batches that needed a forward. */
  hits = 0;
  misses = 0;
  /** Sequences read from the cache, and run through the backbone. */
  sequenceHits = 0;
  sequenceMisses = 0;
  /** Entries found damaged (and deleted). */
  damaged = 0;

  private constructor(
    readonly dir: string,
    private readonly budgetBytes: number,
    private readonly nLayers: number,
    private readonly d: number,
    private readonly bits: Bits,
    private readonly keepLast: boolean,
  ) {}

  /** The cache in `dir`, its entries listed without holding the event loop. */
  static async open(dir: string, budgetBytes: number, nLayers: number, d: number, bits: Bits, keepLast: boolean): Promise<ActivationCache> {
    const cache = new ActivationCache(dir, budgetBytes, nLayers, d, bits, keepLast);
    let names: string[] = [];
    try {
      names = (await fs.promises.readdir(dir)).filter((n) => n.endsWith(SUFFIX));
    } catch {
      // nothing kept yet
    }
    for (let i = 0; i < names.length; i += 256) {
      await Promise.all(names.slice(i, i + 256).map(async (n) => {
        try {
          const st = await fs.promises.stat(path.join(dir, n));
          cache.entries.set(n.slice(0, -SUFFIX.length), { bytes: st.size, used: st.mtimeMs });
          cache.size += st.size;
        } catch {
          // deleted meanwhile (another job's eviction)
        }
      }));
    }
    return cache;
  }

  private file(key: string): string {
    return path.join(this.dir, key + SUFFIX);
  }

  /** Bytes of one sequence's entry of `rows` rows (its check included). */
  private entryBytes(rows: number): number {
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    return CHECK_BYTES + this.nLayers * rows * (scaleBytes + valueBytes) + (this.keepLast ? rows * this.d * 4 : 0);
  }

  private drop(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    this.entries.delete(key);
    this.size -= e.bytes;
    fs.promises.rm(this.file(key), { force: true }).catch(() => undefined);
  }

  /** A sequence's blocks, read and checked; undefined when it is not kept, or damaged (then deleted). */
  private async read(key: string, rows: number): Promise<SequenceBlocks | undefined> {
    const e = this.entries.get(key);
    if (!e || e.writing) return undefined;
    let bytes: Buffer;
    try {
      bytes = await fs.promises.readFile(this.file(key));
    } catch {
      this.entries.delete(key);
      this.size -= e.bytes;
      return undefined; // deleted by another job's eviction
    }
    const data = bytes.subarray(CHECK_BYTES);
    if (bytes.length !== this.entryBytes(rows) || !createHash('sha256').update(data).digest().subarray(0, CHECK_BYTES).equals(bytes.subarray(0, CHECK_BYTES))) {
      this.damaged++;
      this.drop(key);
      return undefined;
    }
    e.used = Date.now();
    const now = new Date();
    fs.promises.utimes(this.file(key), now, now).catch(() => undefined); // its use, for the next job's eviction order
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    const out: SequenceBlocks = { scales: [], values: [] };
    let at = 0;
    for (let l = 0; l < this.nLayers; l++) {
      out.scales.push(data.subarray(at, (at += rows * scaleBytes)));
      out.values.push(data.subarray(at, (at += rows * valueBytes)));
    }
    if (this.keepLast) out.last = data.subarray(at, at + rows * this.d * 4);
    return out;
  }

  /** The kept blocks of sequences `keys` of `lengths` rows: undefined for each that is not (validly) kept. */
  async lookup(keys: string[], lengths: number[]): Promise<(SequenceBlocks | undefined)[]> {
    const got = await Promise.all(keys.map((k, i) => this.read(k, lengths[i]!)));
    const found = got.filter((b) => b !== undefined).length;
    this.sequenceHits += found;
    this.sequenceMisses += keys.length - found;
    if (found === keys.length) this.hits++;
    else this.misses++;
    return got;
  }

  /**
   * The sequences of a layers payload just encoded (one quantized block per
   * tapped layer over all `lengths` rows, batchPayload.ts), cut into their own
   * blocks: views of `payload` and of the label-private float32 last layer,
   * which the caller does not reuse before the blocks are stored and
   * assembled.
   */
  cut(payload: Buffer, lengths: number[], last?: Float32Array): SequenceBlocks[] {
    const rows = lengths.reduce((a, b) => a + b, 0);
    const { scaleBytes, valueBytes } = rowLayout(this.d, this.bits);
    const block = rows * (scaleBytes + valueBytes);
    let row = 0;
    return lengths.map((n) => {
      const start = row;
      row += n;
      const out: SequenceBlocks = { scales: [], values: [] };
      for (let l = 0; l < this.nLayers; l++) {
        out.scales.push(payload.subarray(l * block + start * scaleBytes, l * block + (start + n) * scaleBytes));
        out.values.push(payload.subarray(l * block + rows * scaleBytes + start * valueBytes, l * block + rows * scaleBytes + (start + n) * valueBytes));
      }
      if (this.keepLast && last) out.last = Buffer.from(last.buffer, last.byteOffset + start * this.d * 4, n * this.d * 4);
      return out;
    });
  }

  /** Keeps a sequence's blocks under its key; past the budget the least recently used entries go first. A failed write only means it is computed again later. */
  async store(key: string, blocks: SequenceBlocks): Promise<void> {
    if (this.entries.has(key)) return;
    const parts: Buffer[] = [];
    for (let l = 0; l < this.nLayers; l++) parts.push(blocks.scales[l]!, blocks.values[l]!);
    if (this.keepLast && blocks.last) parts.push(blocks.last);
    const bytes = CHECK_BYTES + parts.reduce((a, b) => a + b.length, 0);
    if (bytes > this.budgetBytes) return;
    if (this.size + bytes > this.budgetBytes) this.evict(this.budgetBytes - bytes);
    // Counted before it is written, so that writes under way together stay within the budget.
    const entry: Entry = { bytes, used: Date.now(), writing: true };
    this.entries.set(key, entry);
    this.size += bytes;
    const tmp = `${this.file(key)}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await fs.promises.mkdir(this.dir, { recursive: true });
      const hash = createHash('sha256');
      for (const part of parts) hash.update(part);
      // The check, then the parts, written as they are (no copy).
      const fh = await fs.promises.open(tmp, 'w');
      try {
        await writeAll(fh, [hash.digest().subarray(0, CHECK_BYTES), ...parts]);
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, this.file(key));
      entry.writing = false;
    } catch {
      await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
      if (this.entries.get(key) === entry) {
        this.entries.delete(key);
        this.size -= bytes;
      }
    }
  }

  /** Deletes the least recently used entries until at most `target` bytes are kept. */
  private evict(target: number): void {
    const order = [...this.entries].sort((a, b) => a[1].used - b[1].used);
    for (const [key, e] of order) {
      if (this.size <= target) break;
      if (!e.writing) this.drop(key);
    }
  }

  /** A batch's tapped layers' quantized blocks (the payload's layer part, byte for byte as a forward encodes it) and the label-private last layer, from its sequences' blocks (into buffers taken from `pool`, when given). */
  assemble(blocks: SequenceBlocks[], pool?: BufferPool): { layers: Buffer; last?: Float32Array } {
    const parts = Array.from({ length: this.nLayers }, (_, l) => [...blocks.map((b) => b.scales[l]!), ...blocks.map((b) => b.values[l]!)]).flat();
    const bytes = parts.reduce((a, b) => a + b.length, 0);
    const layers = copyInto(parts, pool ? pool.take(bytes) : Buffer.allocUnsafe(bytes));
    let last: Float32Array | undefined;
    if (this.keepLast) {
      const floats = blocks.reduce((a, b) => a + b.last!.length, 0) / 4;
      last = pool ? pool.takeFloats(floats) : new Float32Array(floats);
      copyInto(blocks.map((b) => b.last!), new Uint8Array(last.buffer, last.byteOffset, floats * 4));
    }
    return { layers, last };
  }

  /** Bytes kept on disk. */
  get bytes(): number {
    return this.size;
  }

  /** Entries kept. */
  get count(): number {
    return this.entries.size;
  }
}

/** Every file of the device store's activation caches (every model's, and any from earlier versions). */
export function activationCacheFiles(storeDir: string): string[] {
  const root = path.join(storeDir, 'activations');
  let dirs: string[];
  try {
    dirs = fs.readdirSync(root);
  } catch {
    return [];
  }
  return dirs.flatMap((d) => {
    try {
      return fs.readdirSync(path.join(root, d)).map((f) => path.join(root, d, f));
    } catch {
      return []; // not a folder, or gone
    }
  });
}

/** Deletes the device store's activation caches; returns how many folders and their bytes. */
export function pruneActivationCaches(storeDir: string): { caches: number; bytes: number } {
  const root = path.join(storeDir, 'activations');
  const bytes = activationCacheFiles(storeDir).reduce((a, f) => a + (fs.statSync(f, { throwIfNoEntry: false })?.size ?? 0), 0);
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return { caches: 0, bytes: 0 };
  }
  for (const n of names) fs.rmSync(path.join(root, n), { recursive: true, force: true });
  return { caches: names.length, bytes };
}

/** `parts` one after another into `out` (which holds them exactly). */
function copyInto<T extends Uint8Array>(parts: Uint8Array[], out: T): T {
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Writes `parts` one after another (writev may take fewer bytes than asked: it goes on from there). */
async function writeAll(fh: fs.promises.FileHandle, parts: Uint8Array[]): Promise<void> {
  let rest = parts.filter((p) => p.length > 0);
  while (rest.length > 0) {
    let { bytesWritten } = await fh.writev(rest);
    while (rest.length > 0 && bytesWritten >= rest[0]!.length) bytesWritten -= rest.shift()!.length;
    if (rest.length > 0 && bytesWritten > 0) rest[0] = rest[0]!.subarray(bytesWritten);
  }
}
