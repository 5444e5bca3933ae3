import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { encodeHead, HeadKey, headKeyOf, headName, parseHead, StoredHead } from '../records';
import { StorageError } from '../StorageError';
import type { Heads } from '../Store';

/** Who uploaded a stored head and when a job last used it. */
interface HeadMeta {
  uploadedBy: string;
  lastUsedAt: string;
}

/**
 * Heads cached in `<data>/heads/<fingerprint>.<headDigest>.head` (u32 rows,
 * u32 cols, f32 norm[cols], f16 head[rows][cols]). These are public model
 * weights, uploaded once per (model, digest) by the first device that needs
 * them and verified against the digest; a stored head is never replaced. A
 * head uploaded with another digest for the same model is stored apart and
 * serves only sessions that state that digest. The file's layout is
 * records.ts's encodeHead. Beside each head,
 * `<…>.head.json` says who uploaded it (it counts toward that user's storage)
 * and when a job last used it (heads unused for long are deleted).
 */
export class HeadStore implements Heads {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = path.join(dataDir, 'heads');
  }

  private file(key: HeadKey): string {
    return path.join(this.dir, headName(key));
  }

  async has(key: HeadKey): Promise<boolean> {
    return fs.existsSync(this.file(key));
  }

  /** Stores a verified head uploaded by `user`; a head already stored under the key stays as it is. A write the disk refuses is WRITE_FAILED. */
  async save(key: HeadKey, rows: number, cols: number, norm: Float32Array, headHalves: Uint16Array, user = ''): Promise<void> {
    if (fs.existsSync(this.file(key))) return;
    try {
      writeFileAtomic(this.metaFile(key), `${JSON.stringify({ uploadedBy: user, lastUsedAt: new Date().toISOString() } satisfies HeadMeta)}\n`);
      writeFileAtomic(this.file(key), encodeHead(rows, cols, norm, headHalves));
    } catch {
      fs.rmSync(this.metaFile(key), { force: true });
      throw new StorageError('WRITE_FAILED', 'the server could not store the model head (is its disk full?); nothing was stored');
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
      const key = headKeyOf(path.basename(file));
      return key ? [{ key, uploadedBy: this.meta(file).uploadedBy }] : [];
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

  async load(key: HeadKey): Promise<StoredHead> {
    return parseHead(await fs.promises.readFile(this.file(key)));
  }
}
