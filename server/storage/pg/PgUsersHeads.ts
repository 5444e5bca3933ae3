import { ServerError } from '../../ServerError';
import { encodeHead, HeadKey, headName, newUser, parseHead, StoredHead, UserRecord } from '../records';
import { StorageError } from '../StorageError';
import type { Heads } from '../Store';
import { TokenUsers } from '../TokenUsers';
import { readBlob, writeBlob } from './blobs';
import { PgConnection, USERS_CHANNEL } from './PgConnection';

/** Users in PostgreSQL. Every replica keeps a snapshot, reloaded when any replica notifies a change (and on a miss). */
export class PgUsers extends TokenUsers {
  private readonly changed: (() => void)[] = [];

  /** The rows the snapshot was made from, to tell whether a reload changed anything. */
  private loaded = '';

  constructor(private readonly db: PgConnection) {
    super();
    db.on(USERS_CHANNEL, () => void this.reloadAndTell());
  }

  /** Reloads, and tells the listeners when something changed (a notification, or the periodic check should one be lost). */
  async reloadAndTell(): Promise<void> {
    if (await this.reload().catch(() => false)) this.changed.forEach((f) => f());
  }

  /** Calls `f` after the snapshot changed because some replica changed users. */
  onChanged(f: () => void): void {
    this.changed.push(f);
  }

  /** Reloads the snapshot; true when it changed. */
  async reload(): Promise<boolean> {
    const { rows } = await this.db.query<{ name: string; salt: string; hash: string; created_at: string; revoked_at: string | null }>('SELECT name, salt, hash, created_at, revoked_at FROM users ORDER BY created_at, name');
    const text = JSON.stringify(rows);
    if (text === this.loaded) return false;
    this.loaded = text;
    this.replace(rows.map((r): UserRecord => ({ name: r.name, salt: r.salt, hash: r.hash, createdAt: r.created_at, ...(r.revoked_at ? { revokedAt: r.revoked_at } : {}) })));
    return true;
  }

  protected override refresh(): void {}

  protected override async refreshNow(): Promise<void> {
    await this.reload();
  }

  async add(name: string): Promise<string> {
    const { record, token } = newUser(name);
    try {
      await this.db.transaction(async (c) => {
        await c.query('INSERT INTO users (name, salt, hash, created_at) VALUES ($1, $2, $3, $4)', [record.name, record.salt, record.hash, record.createdAt]);
        await c.query(`SELECT pg_notify('${USERS_CHANNEL}', '')`);
      });
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new ServerError('EXISTS', `User ${name} exists; revoke it first to issue a new token.`);
      throw err;
    }
    await this.reloadAndTell();
    return token;
  }

  async revoke(name: string): Promise<void> {
    const n = await this.db.transaction(async (c) => {
      const r = await c.query('UPDATE users SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL', [name, new Date().toISOString()]);
      await c.query(`SELECT pg_notify('${USERS_CHANNEL}', '')`);
      return r.rowCount ?? 0;
    });
    if (n === 0) throw new ServerError('NO_SUCH_USER', `No active user ${name}.`);
    await this.reloadAndTell();
  }

  /** Copies a user record as it is (migration from a data folder). */
  async importRecord(u: UserRecord): Promise<void> {
    await this.db.query('INSERT INTO users (name, salt, hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING', [u.name, u.salt, u.hash, u.createdAt, u.revokedAt ?? null]);
  }
}

/** Model heads in PostgreSQL (public weights), as parts; read into memory by the replica that trains with them. */
export class PgHeads implements Heads {
  constructor(private readonly db: PgConnection) {}

  async has(key: HeadKey): Promise<boolean> {
    return (await this.db.query('SELECT 1 FROM heads WHERE key = $1', [headName(key)])).rowCount > 0;
  }

  async save(key: HeadKey, rows: number, cols: number, norm: Float32Array, halves: Uint16Array, user = ''): Promise<void> {
    const name = headName(key);
    const bytes = encodeHead(rows, cols, norm, halves);
    await this.db.transaction(async (c) => {
      const r = await c.query('INSERT INTO heads (key, rows, cols, bytes, uploaded_by, last_used_at) VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT DO NOTHING', [name, rows, cols, bytes.length, user]);
      if ((r.rowCount ?? 0) > 0) await writeBlob(c, `head:${name}`, 'head', bytes);
    });
  }

  async touch(key: HeadKey): Promise<void> {
    await this.db.query('UPDATE heads SET last_used_at = now() WHERE key = $1', [headName(key)]).catch(() => undefined);
  }

  async uploadedBytesOf(user: string): Promise<number> {
    return Number((await this.db.query<{ n: string }>('SELECT coalesce(sum(bytes), 0) AS n FROM heads WHERE uploaded_by = $1', [user])).rows[0]!.n);
  }

  async removeUnused(maxAgeMs: number, inUse: ReadonlySet<string>, now = Date.now()): Promise<number> {
    return this.db.transaction(async (c) => {
      const r = await c.query<{ key: string }>('DELETE FROM heads WHERE last_used_at < to_timestamp($1 / 1000.0) AND NOT (key = ANY($2)) RETURNING key', [now - maxAgeMs, [...inUse]]);
      for (const { key } of r.rows) await c.query('DELETE FROM blobs WHERE owner = $1', [`head:${key}`]);
      return r.rows.length;
    });
  }

  async load(key: HeadKey): Promise<StoredHead> {
    const bytes = await readBlob(this.db, `head:${headName(key)}`, 'head');
    if (!bytes) throw new StorageError('DAMAGED', 'the model head is not in the database; let a device upload it again');
    return parseHead(bytes);
  }
}
