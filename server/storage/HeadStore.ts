import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../common/atomicWrite';
import type { ModelSpec } from '../../common/messages';
import { WireError } from '../../common/WireError';
import { ServerError } from '../ServerError';
import type { Heads } from './Store';

/** A model's frozen final norm and head, as the server keeps them. */
export interface StoredHead {
  rows: number;
  cols: number;
  norm: Float32Array; // [cols]
  /** The head as float16 bits, as uploaded: [rows][cols]. */
  halves: Uint16Array;
}

export const FINGERPRINT_PATTERN = /^[0-9a-f]{64}$/;

/** Who uploaded a stored head and when a job last used it. */
interface HeadMeta {
  uploadedBy: string;
  lastUsedAt: string;
}

/** What names a stored head: the model file and the digest of the head's content. */
export type HeadKey = Pick<ModelSpec, 'fingerprint' | 'headDigest'>;

/**
 * Heads cached in `<data>/heads/<fingerprint>.<headDigest>.head` (u32 rows,
 * u32 cols, f32 norm[cols], f16 head[rows][cols]). These are public model
 * weights, uploaded once per (model, digest) by the first device that needs
 * them and verified against the digest; a stored head is never replaced. A
 * head uploaded with another digest for the same model is stored apart and
 * serves only sessions that state that digest. Beside each head,
 * `<…>.head.json` says who uploaded it (it counts toward that user's storage)
 * and when a job last used it (heads unused for long are deleted).
 */
export class HeadStore implements Heads {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, 'heads');
  }

  private file(key: HeadKey): string {
    if (!FINGERPRINT_PATTERN.test(key.fingerprint) || !FINGERPRINT_PATTERN.test(key.headDigest)) {
      throw new WireError('BAD_FRAME', 'model fingerprint and head digest must be 64 hex digits');
    }
    return path.join(this.dir, `${key.fingerprint}.${key.headDigest}.head`);
  }

  async has(key: HeadKey): Promise<boolean> {
    return fs.existsSync(this.file(key));
  }

  /** Bytes a stored head of rows x cols takes. */
  static bytesOf(rows: number, cols: number): number {
    return 8 + 4 * cols + 2 * rows * cols;
  }

  /** Stores a verified head uploaded by `user`; a head already stored under the key stays as it is. A write the disk refuses is STORAGE. */
  async save(key: HeadKey, rows: number, cols: number, norm: Float32Array, headHalves: Uint16Array, user = ''): Promise<void> {
    if (fs.existsSync(this.file(key))) return;
    const header = Buffer.alloc(8);
    header.writeUInt32LE(rows, 0);
    header.writeUInt32LE(cols, 4);
    try {
      writeFileAtomic(this.metaFile(key), `${JSON.stringify({ uploadedBy: user, lastUsedAt: new Date().toISOString() } satisfies HeadMeta)}\n`);
      writeFileAtomic(
        this.file(key),
        Buffer.concat([header, Buffer.from(norm.buffer, norm.byteOffset, norm.byteLength), Buffer.from(headHalves.buffer, headHalves.byteOffset, headHalves.byteLength)]),
      );
    } catch {
      fs.rmSync(this.metaFile(key), { force: true });
      throw new WireError('STORAGE', 'the server could not store the model head (is its disk full?); nothing was stored');
    }
  }

  private metaFile(key: HeadKey): string {
    return `${this.file(key)}.json`;
  }

  private meta(file: string): HeadMeta {
    try {
      return JSON.parse(fs.readFileSync(`${file}.json`, 'utf8')) as HeadMeta;
    } catch {
      return { uploadedBy: '', lastUsedAt: fs.statSync(file).mtime.toISOString() };
    }
  }

  /** Notes that a job uses the head now (it is kept while used). */
  async touch(key: HeadKey): Promise<void> {
    const file = this.file(key);
    try {
      writeFileAtomic(`${file}.json`, `${JSON.stringify({ ...this.meta(file), lastUsedAt: new Date().toISOString() })}\n`);
    } catch {
      // the date only delays the head's expiry; training goes on
    }
  }

  private stored(): string[] {
    try {
      return fs.readdirSync(this.dir).filter((n) => n.endsWith('.head')).map((n) => path.join(this.dir, n));
    } catch {
      return [];
    }
  }

  /** Every stored head's key and uploader (a migration walks them). */
  storedHeads(): { key: HeadKey; uploadedBy: string }[] {
    return this.stored().flatMap((file) => {
      const m = /^([0-9a-f]{64})\.([0-9a-f]{64})\.head$/.exec(path.basename(file));
      return m ? [{ key: { fingerprint: m[1]!, headDigest: m[2]! }, uploadedBy: this.meta(file).uploadedBy }] : [];
    });
  }

  /** Bytes of the heads `user` uploaded (their storage quota counts them). */
  async uploadedBytesOf(user: string): Promise<number> {
    return this.stored().filter((f) => this.meta(f).uploadedBy === user).reduce((sum, f) => sum + fs.statSync(f).size, 0);
  }

  /** Deletes the heads no job has used for `maxAgeMs`, except those in `inUse` (file names); returns how many. */
  async removeUnused(maxAgeMs: number, inUse: ReadonlySet<string>, now = Date.now()): Promise<number> {
    let removed = 0;
    for (const file of this.stored()) {
      if (inUse.has(path.basename(file)) || now - Date.parse(this.meta(file).lastUsedAt) < maxAgeMs) continue;
      fs.rmSync(file, { force: true });
      fs.rmSync(`${file}.json`, { force: true });
      removed++;
    }
    return removed;
  }

  /** The file name a head is stored under (what removeUnused's `inUse` holds). */
  static fileName(key: HeadKey): string {
    return `${key.fingerprint}.${key.headDigest}.head`;
  }

  async load(key: HeadKey): Promise<StoredHead> {
    return HeadStore.parse(await fs.promises.readFile(this.file(key)));
  }

  /** A stored head's bytes (u32 rows, u32 cols, f32 norm, f16 head) as arrays; DAMAGED_FILE when the size is wrong. */
  static parse(buf: Buffer): StoredHead {
    const rows = buf.readUInt32LE(0);
    const cols = buf.readUInt32LE(4);
    if (buf.length !== HeadStore.bytesOf(rows, cols)) throw new ServerError('DAMAGED_FILE', 'a stored model head has the wrong size; delete it and let a device upload it again');
    const norm = new Float32Array(cols);
    Buffer.from(norm.buffer).set(buf.subarray(8, 8 + 4 * cols));
    const at = buf.byteOffset + 8 + 4 * cols;
    // A view when aligned (large files get their own buffer), else one copy.
    const halves = at % 2 === 0 ? new Uint16Array(buf.buffer, at, rows * cols) : new Uint16Array(Uint8Array.from(buf.subarray(8 + 4 * cols)).buffer);
    return { rows, cols, norm, halves };
  }
}
