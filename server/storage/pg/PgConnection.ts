import { Client, Pool, PoolClient } from 'pg';
import { ServerError } from '../../ServerError';
import { StorageError } from '../StorageError';
import { MIGRATIONS } from './migrations';

/** Channel on which every replica hears that users changed. */
export const USERS_CHANNEL = 'mobillm_users';
/** Advisory lock key under which migrations run (one replica at a time). */
const MIGRATION_LOCK = 0x6d6f6269;
const CONNECT_TIMEOUT_MS = 5000;

/** A database URL as it may be printed: the password left out, nothing else changed. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '';
    return u.toString().replace(/:@/, '@');
  } catch {
    return 'the database URL (which is not a valid URL)';
  }
}

/** Whether `err` means the database cannot be reached now (refused, reset, shut down, timed out), not a bad query. */
export function isUnreachable(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === 'string' && (/^(ECONN|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EPIPE|EAI_)/.test(e.code) || /^(08|57P)/.test(e.code))) return true;
  return /Connection terminated|timeout exceeded|connect ETIMEDOUT|Client has encountered a connection error|Connection ended/i.test(e?.message ?? '');
}

/**
 * One replica's connections to PostgreSQL: a pool for queries, and one
 * client that LISTENs (reconnected when it drops). Every query error that
 * means the database is gone becomes the StorageError UNAVAILABLE (devices
 * are told to wait and resume); nothing of a query or its values reaches an error message.
 */
export class PgConnection {
  private listener: Client | undefined;
  private closed = false;
  private readonly listeners = new Map<string, (() => void)[]>();
  /** Seconds spent waiting for the database (queries and transactions), since start. */
  busySeconds = 0;

  private constructor(
    readonly pool: Pool,
    private readonly url: string,
  ) {
    pool.on('error', () => undefined); // an idle client lost: the next query reconnects
  }

  get where(): string {
    return redactUrl(this.url);
  }

  /** Connects, applies the migrations this database lacks, and starts listening. DATABASE_UNREACHABLE names the URL without its password. */
  static async open(url: string): Promise<PgConnection> {
    try {
      new URL(url);
    } catch {
      throw new ServerError('BAD_CONFIG', 'the database URL is not a valid URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)');
    }
    const pool = new Pool({ connectionString: url, max: 8, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, idleTimeoutMillis: 30_000 });
    const conn = new PgConnection(pool, url);
    try {
      await conn.migrate();
      await conn.listen();
    } catch (err) {
      await pool.end().catch(() => undefined);
      if (err instanceof ServerError) throw err;
      const why = (err as { code?: string }).code ?? 'no answer';
      throw new ServerError('DATABASE_UNREACHABLE', `could not reach the database at ${redactUrl(url)} (${why}); is PostgreSQL running there and the URL right?`);
    }
    return conn;
  }

  /** Applies, in order and each in its own transaction, the migrations not yet applied. */
  private async migrate(): Promise<void> {
    const c = await this.pool.connect();
    try {
      await c.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())');
      const done = new Set((await c.query<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
      const newest = Math.max(...MIGRATIONS.map((m) => m.version));
      if ([...done].some((v) => v > newest)) throw new ServerError('DATABASE_SCHEMA', `the database's schema is newer (version ${Math.max(...done)}) than this server knows (${newest}); update the server`);
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        await c.query('BEGIN');
        try {
          await c.query(m.sql);
          await c.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
          await c.query('COMMIT');
        } catch (err) {
          await c.query('ROLLBACK');
          throw err;
        }
      }
    } finally {
      await c.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
      c.release();
    }
  }

  /** The schema versions applied, in order. */
  async schemaVersions(): Promise<number[]> {
    return (await this.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
  }

  private async listen(reconnected = false): Promise<void> {
    if (this.closed) return;
    const client = new Client({ connectionString: this.url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    client.on('notification', (n) => this.notify(n.channel));
    const lost = (): void => {
      if (this.listener !== client) return;
      this.listener = undefined;
      client.end().catch(() => undefined);
      this.relisten();
    };
    client.on('error', lost);
    client.on('end', lost);
    await client.connect();
    for (const channel of [USERS_CHANNEL]) await client.query(`LISTEN ${channel}`);
    this.listener = client;
    // Whatever was notified while no one listened: every listener reloads.
    if (reconnected) for (const channel of this.listeners.keys()) this.notify(channel);
  }

  private relisten(): void {
    if (this.closed) return;
    setTimeout(() => void this.listen(true).catch(() => this.relisten()), 500).unref();
  }

  private notify(channel: string): void {
    for (const f of this.listeners.get(channel) ?? []) f();
  }

  /** Calls `f` on every notification on `channel` (and after the listening connection comes back). */
  on(channel: string, f: () => void): void {
    this.listeners.set(channel, [...(this.listeners.get(channel) ?? []), f]);
  }

  /** A query; the database gone is UNAVAILABLE. */
  async query<R extends object = Record<string, unknown>>(sql: string, values?: unknown[]): Promise<{ rows: R[]; rowCount: number }> {
    const t0 = process.hrtime.bigint();
    try {
      const r = await this.pool.query<R>(sql, values);
      return { rows: r.rows, rowCount: r.rowCount ?? 0 };
    } catch (err) {
      throw storeError(err);
    } finally {
      this.busySeconds += Number(process.hrtime.bigint() - t0) / 1e9;
    }
  }

  /** Runs `work` in one transaction (rolled back when it throws). */
  async transaction<T>(work: (c: PoolClient) => Promise<T>): Promise<T> {
    const t0 = process.hrtime.bigint();
    let c: PoolClient;
    try {
      c = await this.pool.connect();
    } catch (err) {
      throw storeError(err);
    }
    try {
      await c.query('BEGIN');
      const out = await work(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw storeError(err);
    } finally {
      c.release();
      this.busySeconds += Number(process.hrtime.bigint() - t0) / 1e9;
    }
  }

  async reachable(): Promise<boolean> {
    try {
      await Promise.race([this.pool.query('SELECT 1'), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 1000).unref())]);
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const l = this.listener;
    this.listener = undefined;
    await l?.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }
}

/** A database failure as the store reports it: UNAVAILABLE when it is gone, the error itself otherwise. */
function storeError(err: unknown): unknown {
  if (err instanceof StorageError || err instanceof ServerError) return err;
  if (isUnreachable(err)) return new StorageError('UNAVAILABLE', 'the server\'s database is unreachable; nothing is lost: wait, then resume the job');
  return err;
}
