import * as fs from 'node:fs';
import * as path from 'node:path';
import { syncFolder, writeFileAtomic, writeFileAtomicSliced } from '../../../common/atomicWrite';
import { sha256Sliced } from '../../../common/sliced';
import type { JobConfig, ModelSpec } from '../../../common/messages';
import { JOB_ID_PATTERN, JobRecord, newJobRecord } from '../records';
import { StorageError } from '../StorageError';
import type { Jobs } from '../Store';

/** The newest checkpoint and the one before it. */
const CHECKPOINT_FILES = ['checkpoint.mobi', 'checkpoint.prev.mobi'] as const;

/** Jobs on the server's disk, per user: `<data>/jobs/<user>/<id>/job.json` (the record), its checkpoints and its adapter. */
export class JobStore implements Jobs {
  private readonly root: string;

  constructor(dataDir: string) {
    this.root = path.join(dataDir, 'jobs');
  }

  dir(user: string, id: string): string {
    return path.join(this.root, user, id);
  }

  async create(user: string, name: string, model: ModelSpec, config: JobConfig): Promise<JobRecord> {
    const rec = newJobRecord(user, name, model, config);
    await this.save(rec);
    return rec;
  }

  async remove(rec: JobRecord): Promise<void> {
    await fs.promises.rm(this.dir(rec.user, rec.id), { recursive: true, force: true });
  }

  /** Writes the job's record; a write the disk refuses is WRITE_FAILED. */
  async save(rec: JobRecord): Promise<void> {
    rec.updatedAt = new Date().toISOString();
    try {
      writeFileAtomic(path.join(this.dir(rec.user, rec.id), 'job.json'), `${JSON.stringify(rec, null, 2)}\n`);
    } catch {
      throw new StorageError('WRITE_FAILED', 'the server could not store the job\'s record (is its disk full?); what it stored before is kept');
    }
  }

  /** Bytes the jobs of `user` (or one of them) take on disk: records, checkpoints, adapters. */
  async bytesOf(user: string, id?: string): Promise<number> {
    const sizeOf = (p: string): number => {
      try {
        const st = fs.statSync(p);
        return st.isDirectory() ? fs.readdirSync(p).reduce((sum, n) => sum + sizeOf(path.join(p, n)), 0) : st.size;
      } catch {
        return 0;
      }
    };
    return sizeOf(id === undefined ? path.join(this.root, user) : this.dir(user, id));
  }

  /** A user's job, or undefined (also for another user's job id). */
  async get(user: string, id: string): Promise<JobRecord | undefined> {
    return this.getNow(user, id);
  }

  private getNow(user: string, id: string): JobRecord | undefined {
    if (!JOB_ID_PATTERN.test(id)) return undefined;
    try {
      return JSON.parse(fs.readFileSync(path.join(this.dir(user, id), 'job.json'), 'utf8')) as JobRecord;
    } catch {
      return undefined;
    }
  }

  /** The users that have jobs here (a migration walks them). */
  owners(): string[] {
    try {
      return fs.readdirSync(this.root);
    } catch {
      return [];
    }
  }

  async list(user: string): Promise<JobRecord[]> {
    let ids: string[];
    try {
      ids = fs.readdirSync(path.join(this.root, user));
    } catch {
      return [];
    }
    return ids.map((id) => this.getNow(user, id)).filter((r): r is JobRecord => r !== undefined);
  }

  /**
   * Stores a checkpoint and keeps the one before it: the new file is written
   * in full and verified first (writeFileAtomic), then the current one becomes
   * `checkpoint.prev.mobi` and the new one takes its place. A failure leaves
   * the stored checkpoints as they were.
   */
  async writeCheckpoint(rec: JobRecord, bytes: Uint8Array): Promise<void> {
    const dir = this.dir(rec.user, rec.id);
    const next = path.join(dir, 'checkpoint.next.mobi');
    await writeFileAtomicSliced(next, bytes);
    const current = path.join(dir, CHECKPOINT_FILES[0]);
    if (fs.existsSync(current)) fs.renameSync(current, path.join(dir, CHECKPOINT_FILES[1]));
    fs.renameSync(next, current);
    syncFolder(dir);
  }

  /** The stored checkpoints, newest first (at most two; none for a new job), read off the event loop. */
  async readCheckpoints(rec: JobRecord): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (const name of CHECKPOINT_FILES) {
      try {
        out.push(await fs.promises.readFile(path.join(this.dir(rec.user, rec.id), name)));
      } catch {
        // not there (a new job, or no previous checkpoint yet)
      }
    }
    return out;
  }

  /** Stores the job's adapter and notes its size and sha256 in the record (a download sends them first). */
  async writeAdapter(rec: JobRecord, bytes: Uint8Array): Promise<void> {
    await writeFileAtomicSliced(path.join(this.dir(rec.user, rec.id), 'adapter.mobi'), bytes);
    rec.adapter = { bytes: bytes.length, sha256: (await sha256Sliced(bytes)).toString('hex') };
  }

  async readAdapter(rec: JobRecord): Promise<Buffer | undefined> {
    try {
      return await fs.promises.readFile(path.join(this.dir(rec.user, rec.id), 'adapter.mobi'));
    } catch {
      return undefined;
    }
  }

  /** Size and sha256 of the job's adapter (from its record; a record written before they were kept is completed once). */
  async adapterInfo(rec: JobRecord): Promise<{ bytes: number; sha256: string } | undefined> {
    if (rec.adapter) return rec.adapter;
    const bytes = await this.readAdapter(rec);
    if (!bytes) return undefined;
    rec.adapter = { bytes: bytes.length, sha256: (await sha256Sliced(bytes)).toString('hex') };
    await this.save(rec);
    return rec.adapter;
  }

  /** Bytes [offset, offset + length) of the job's adapter, read from that place only. */
  async readAdapterPart(rec: JobRecord, offset: number, length: number): Promise<Buffer> {
    const fd = fs.openSync(path.join(this.dir(rec.user, rec.id), 'adapter.mobi'), 'r');
    try {
      const out = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const n = fs.readSync(fd, out, got, length - got, offset + got);
        if (n === 0) throw new StorageError('DAMAGED', 'the adapter file is shorter than its record says');
        got += n;
      }
      return out;
    } finally {
      fs.closeSync(fd);
    }
  }
}
