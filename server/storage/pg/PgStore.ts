import { randomUUID } from 'node:crypto';
import type { SharedFailures } from '../../AuthLimiter';
import type { Replicas, ServerStore } from '../Store';
import { PgConnection } from './PgConnection';
import { LeaseTiming, PgJobs } from './PgJobs';
import { PgHeads, PgUsers } from './PgUsersHeads';

/** How long a lease lasts unless its owner renews it (a killed replica's jobs move after this). */
export const DEFAULT_LEASE_MS = 5000;

/**
 * The PostgreSQL store: users, jobs (records, state changes, checkpoints,
 * adapters), heads and leases in one database that replicas share. A replica
 * keeps nothing of its own on disk; in memory it holds the jobs it trains
 * (leased), the heads they use and a snapshot of the users.
 */
export class PgStore implements ServerStore {
  readonly kind = 'postgres';
  readonly users: PgUsers;
  readonly jobs: PgJobs;
  readonly heads: PgHeads;
  readonly replicas: Replicas;
  readonly authFailures: SharedFailures;

  private constructor(
    readonly db: PgConnection,
    readonly replicaId: string,
    timing: LeaseTiming,
  ) {
    this.users = new PgUsers(db);
    this.jobs = new PgJobs(db, replicaId, timing);
    this.heads = new PgHeads(db);
    const leaseS = timing.leaseMs / 1000;
    this.replicas = {
      id: replicaId,
      beat: async (advertise) => {
        await db.query('INSERT INTO replicas (id, advertise, seen_at) VALUES ($1, $2, now()) ON CONFLICT (id) DO UPDATE SET advertise = $2, seen_at = now()', [replicaId, advertise ?? null]);
        // Sessions of replicas gone for a minute no longer count toward any limit.
        await db.query('DELETE FROM device_sessions WHERE replica IN (SELECT id FROM replicas WHERE seen_at < now() - interval \'1 minute\')');
        await db.query('DELETE FROM replicas WHERE seen_at < now() - interval \'1 day\'');
        // Should a notification be lost (the listening connection gone a moment), this catches the change.
        await this.users.reloadAndTell();
      },
      openDevice: (session, user, max) =>
        db.transaction(async (c) => {
          await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`devices:${user}`]);
          const { rows } = await c.query<{ n: string }>(
            'SELECT count(*) AS n FROM device_sessions s JOIN replicas r ON r.id = s.replica WHERE s.user_name = $1 AND r.seen_at > now() - make_interval(secs => $2)',
            [user, 2 * leaseS],
          );
          if (Number(rows[0]!.n) >= max) return false;
          await c.query('INSERT INTO device_sessions (id, replica, user_name) VALUES ($1, $2, $3)', [session, replicaId, user]);
          return true;
        }),
      closeDevice: async (session) => void (await db.query('DELETE FROM device_sessions WHERE id = $1', [session]).catch(() => undefined)),
      onUsersChanged: (f) => this.users.onChanged(f),
    };
    this.authFailures = {
      add: async (keys, delta, windowMs) => {
        if (keys.length === 0) return;
        await db.query(
          `INSERT INTO auth_failures AS f (key, count, since) SELECT k, greatest($2::int, 0), now() FROM unnest($1::text[]) AS k
           ON CONFLICT (key) DO UPDATE SET
             count = CASE WHEN f.since < now() - make_interval(secs => $3) THEN greatest($2::int, 0) ELSE greatest(f.count + $2::int, 0) END,
             since = CASE WHEN f.since < now() - make_interval(secs => $3) THEN now() ELSE f.since END`,
          [keys, delta, windowMs / 1000],
        );
      },
      counts: async (keys, windowMs) => {
        const { rows } = await db.query<{ key: string; count: number }>('SELECT key, count FROM auth_failures WHERE key = ANY($1) AND since > now() - make_interval(secs => $2)', [keys, windowMs / 1000]);
        return new Map(rows.map((r) => [r.key, r.count]));
      },
    };
  }

  get leases(): PgJobs {
    return this.jobs;
  }

  get where(): string {
    return this.db.where;
  }

  /** Connects (DATABASE_UNREACHABLE names the URL without its password), migrates, and loads the users. */
  static async open(url: string, options: { replicaId?: string; leaseMs?: number } = {}): Promise<PgStore> {
    const db = await PgConnection.open(url);
    const store = new PgStore(db, options.replicaId ?? randomUUID(), { leaseMs: options.leaseMs ?? DEFAULT_LEASE_MS });
    try {
      await store.users.reload();
      // Sessions an earlier process of this replica id left (killed) are not open any more.
      await db.query('DELETE FROM device_sessions WHERE replica = $1', [store.replicaId]);
    } catch (err) {
      await db.close();
      throw err;
    }
    return store;
  }

  busySeconds(): number {
    return this.db.busySeconds;
  }

  reachable(): Promise<boolean> {
    return this.db.reachable();
  }

  async close(): Promise<void> {
    await this.db.query('DELETE FROM device_sessions WHERE replica = $1', [this.replicaId]).catch(() => undefined);
    await this.db.close();
  }
}
