import type { PoolClient } from 'pg';
import type { JobConfig, ModelSpec } from '../../../common/messages';
import { sha256Sliced } from '../../../common/sliced';
import { JOB_ID_PATTERN, jobKey, JobRecord, newJobRecord } from '../records';
import { StorageError } from '../StorageError';
import type { Jobs, Leases } from '../Store';
import { readBlob, readBlobRange, writeBlob } from './blobs';
import type { PgConnection } from './PgConnection';

const CHECKPOINT = 'checkpoint';
const PREVIOUS = 'checkpoint.prev';
const ADAPTER = 'adapter';

/** How long a lease lasts unless renewed, and how a replica paces itself around it. */
export interface LeaseTiming {
  /** A lease's length, milliseconds (a killed owner's jobs move after it). */
  leaseMs: number;
}

/**
 * Jobs and their leases in PostgreSQL. A replica takes a job's lease before it
 * trains it; the lease's token (raised by every takeover) fences every write:
 * the job's row is locked and its token compared in the same transaction, so
 * a replica that lost the lease (paused, partitioned) has its writes refused
 * with LEASE_LOST and learns that it must stop.
 */
export class PgJobs implements Jobs, Leases {
  /** Fencing tokens of the leases this replica holds, by job id. */
  private readonly held = new Map<string, { token: string; user: string }>();
  private readonly lostListeners: ((key: string) => void)[] = [];

  constructor(
    private readonly db: PgConnection,
    private readonly replica: string,
    private readonly timing: LeaseTiming,
  ) {}

  /** Calls `f` with a job's key when this replica learns it lost that job's lease. */
  onLost(f: (key: string) => void): void {
    this.lostListeners.push(f);
  }

  private lost(id: string): StorageError {
    const h = this.held.get(id);
    this.held.delete(id);
    if (h) for (const f of this.lostListeners) f(jobKey({ user: h.user, id }));
    return new StorageError('LEASE_LOST', 'another server replica took this job over; reconnect and resume it there');
  }

  /** Locks the job's row if this replica's lease still holds it; otherwise LEASE_LOST (and the job is reported lost). */
  private async fence(c: PoolClient, id: string): Promise<string> {
    const h = this.held.get(id);
    const r = h ? await c.query<{ state: string }>('SELECT record->>\'state\' AS state FROM jobs WHERE id = $1 AND lease_owner = $2 AND lease_token = $3 FOR UPDATE', [id, this.replica, h.token]) : undefined;
    if (!r || r.rows.length === 0) throw this.lost(id);
    return r.rows[0]!.state;
  }

  async create(user: string, name: string, model: ModelSpec, config: JobConfig): Promise<JobRecord> {
    const rec = newJobRecord(user, name, model, config);
    await this.db.query('INSERT INTO jobs (id, user_name, record) VALUES ($1, $2, $3)', [rec.id, user, rec]);
    await this.db.query('INSERT INTO job_events (job, state, step, replica) VALUES ($1, $2, 0, $3)', [rec.id, rec.state, this.replica]);
    return rec;
  }

  async remove(rec: JobRecord): Promise<void> {
    await this.db.transaction(async (c) => {
      await c.query('DELETE FROM blobs WHERE owner = $1', [`job:${rec.id}`]);
      await c.query('DELETE FROM jobs WHERE id = $1 AND user_name = $2', [rec.id, rec.user]);
    });
  }

  async save(rec: JobRecord): Promise<void> {
    rec.updatedAt = new Date().toISOString();
    await this.db.transaction(async (c) => {
      const was = await this.fence(c, rec.id);
      await c.query('UPDATE jobs SET record = $2 WHERE id = $1', [rec.id, rec]);
      if (was !== rec.state) await c.query('INSERT INTO job_events (job, state, step, replica) VALUES ($1, $2, $3, $4)', [rec.id, rec.state, rec.step, this.replica]);
    });
  }

  async bytesOf(user: string, id?: string): Promise<number> {
    const { rows } = await this.db.query<{ n: string }>(
      `SELECT coalesce(sum(octet_length(b.data)), 0) + (SELECT coalesce(sum(octet_length(record::text)), 0) FROM jobs WHERE user_name = $1 AND ($2::uuid IS NULL OR id = $2)) AS n
         FROM blobs b JOIN jobs j ON b.owner = 'job:' || j.id WHERE j.user_name = $1 AND ($2::uuid IS NULL OR j.id = $2)`,
      [user, id !== undefined && JOB_ID_PATTERN.test(id) ? id : null],
    );
    return Number(rows[0]!.n);
  }

  async get(user: string, id: string): Promise<JobRecord | undefined> {
    if (!JOB_ID_PATTERN.test(id)) return undefined;
    return (await this.db.query<{ record: JobRecord }>('SELECT record FROM jobs WHERE id = $1 AND user_name = $2', [id, user])).rows[0]?.record;
  }

  async list(user: string): Promise<JobRecord[]> {
    return (await this.db.query<{ record: JobRecord }>('SELECT record FROM jobs WHERE user_name = $1 ORDER BY record->>\'createdAt\'', [user])).rows.map((r) => r.record);
  }

  /** The new checkpoint, the current one kept as the previous: one transaction, so a failure leaves both as they were. */
  async writeCheckpoint(rec: JobRecord, bytes: Uint8Array): Promise<void> {
    const owner = `job:${rec.id}`;
    await this.db.transaction(async (c) => {
      await this.fence(c, rec.id);
      await c.query('DELETE FROM blobs WHERE owner = $1 AND name = $2', [owner, PREVIOUS]);
      await c.query('UPDATE blobs SET name = $3 WHERE owner = $1 AND name = $2', [owner, CHECKPOINT, PREVIOUS]);
      await writeBlob(c, owner, CHECKPOINT, bytes);
    });
  }

  async readCheckpoints(rec: JobRecord): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (const name of [CHECKPOINT, PREVIOUS]) {
      const b = await readBlob(this.db, `job:${rec.id}`, name);
      if (b) out.push(b);
    }
    return out;
  }

  async writeAdapter(rec: JobRecord, bytes: Uint8Array): Promise<void> {
    await this.db.transaction(async (c) => {
      await this.fence(c, rec.id);
      await writeBlob(c, `job:${rec.id}`, ADAPTER, bytes);
    });
    rec.adapter = { bytes: bytes.length, sha256: (await sha256Sliced(bytes)).toString('hex') };
  }

  readAdapter(rec: JobRecord): Promise<Buffer | undefined> {
    return readBlob(this.db, `job:${rec.id}`, ADAPTER);
  }

  async adapterInfo(rec: JobRecord): Promise<{ bytes: number; sha256: string } | undefined> {
    return rec.adapter;
  }

  readAdapterPart(rec: JobRecord, offset: number, length: number): Promise<Buffer> {
    return readBlobRange(this.db, `job:${rec.id}`, ADAPTER, offset, length);
  }

  /** Copies a job as it is, with its checkpoints and adapter (migration from a data folder). */
  async importJob(rec: JobRecord, checkpoints: Buffer[], adapter: Buffer | undefined): Promise<void> {
    await this.db.transaction(async (c) => {
      const r = await c.query('INSERT INTO jobs (id, user_name, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [rec.id, rec.user, rec]);
      if ((r.rowCount ?? 0) === 0) return;
      await c.query('INSERT INTO job_events (job, state, step, replica) VALUES ($1, $2, $3, $4)', [rec.id, rec.state, rec.step, 'migrate']);
      const names = [CHECKPOINT, PREVIOUS];
      for (let i = 0; i < checkpoints.length && i < 2; i++) await writeBlob(c, `job:${rec.id}`, names[i]!, checkpoints[i]!);
      if (adapter) await writeBlob(c, `job:${rec.id}`, ADAPTER, adapter);
    });
  }

  // Leases

  async acquire(rec: JobRecord): Promise<void> {
    const leaseS = this.timing.leaseMs / 1000;
    const deadline = Date.now() + this.timing.leaseMs + 2000;
    for (;;) {
      const got = await this.db.query<{ token: string }>(
        `UPDATE jobs SET lease_owner = $2, lease_token = lease_token + 1, lease_expires = now() + make_interval(secs => $3)
          WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires < now()) RETURNING lease_token AS token`,
        [rec.id, this.replica, leaseS],
      );
      if (got.rows.length > 0) {
        this.held.set(rec.id, { token: got.rows[0]!.token, user: rec.user });
        return;
      }
      // Held by another replica: follow it while it renews; wait out the lease of one that stopped.
      const { rows } = await this.db.query<{ advertise: string | null; alive: boolean; left: number }>(
        `SELECT r.advertise, coalesce(r.seen_at > now() - make_interval(secs => $2), false) AS alive,
                extract(epoch FROM j.lease_expires - now()) * 1000 AS left
           FROM jobs j LEFT JOIN replicas r ON r.id = j.lease_owner WHERE j.id = $1`,
        [rec.id, leaseS / 2],
      );
      const owner = rows[0];
      if (!owner) throw new StorageError('NO_SUCH_JOB', 'no such job for this user');
      if (owner.alive || Date.now() > deadline) {
        throw new StorageError('HELD_ELSEWHERE', owner.advertise ? 'another server replica trains this job; resume it there' : 'another server replica trains this job; resume it in a few seconds', owner.advertise ?? undefined);
      }
      await new Promise((r) => setTimeout(r, Math.max(50, Math.min(250, Number(owner.left)))));
    }
  }

  async release(rec: JobRecord): Promise<void> {
    const h = this.held.get(rec.id);
    if (!h) return;
    this.held.delete(rec.id);
    await this.db.query('UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE id = $1 AND lease_owner = $2 AND lease_token = $3', [rec.id, this.replica, h.token]).catch(() => undefined);
  }

  async renew(): Promise<string[]> {
    if (this.held.size === 0) return [];
    const ids = [...this.held.keys()];
    const { rows } = await this.db.query<{ id: string }>(
      `UPDATE jobs j SET lease_expires = now() + make_interval(secs => $3)
         FROM unnest($1::uuid[], $2::bigint[]) AS h(id, token)
        WHERE j.id = h.id AND j.lease_token = h.token AND j.lease_owner = $4 RETURNING j.id`,
      [ids, ids.map((id) => this.held.get(id)!.token), this.timing.leaseMs / 1000, this.replica],
    );
    const renewed = new Set(rows.map((r) => r.id));
    const lost: string[] = [];
    for (const id of ids) {
      const h = this.held.get(id);
      if (renewed.has(id) || !h) continue;
      lost.push(jobKey({ user: h.user, id }));
      this.lost(id);
    }
    return lost;
  }

  async heldElsewhere(user: string): Promise<number> {
    const { rows } = await this.db.query<{ n: string }>('SELECT count(*) AS n FROM jobs WHERE user_name = $1 AND lease_owner IS NOT NULL AND lease_owner <> $2 AND lease_expires > now()', [user, this.replica]);
    return Number(rows[0]!.n);
  }
}
