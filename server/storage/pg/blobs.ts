import type { PoolClient } from 'pg';
import type { PgConnection } from './PgConnection';

/** Bytes per stored part: a head or checkpoint is kept as parts, so no value nears PostgreSQL's 1 GB limit or a string's. */
export const BLOB_PART_BYTES = 8 * 2 ** 20;

/** Stores `bytes` as (owner, name)'s parts, replacing what was there; runs inside the caller's transaction. */
export async function writeBlob(c: PoolClient, owner: string, name: string, bytes: Uint8Array): Promise<void> {
  await c.query('DELETE FROM blobs WHERE owner = $1 AND name = $2', [owner, name]);
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let part = 0, at = 0; at < buf.length || part === 0; part++, at += BLOB_PART_BYTES) {
    await c.query('INSERT INTO blobs (owner, name, part, data) VALUES ($1, $2, $3, $4)', [owner, name, part, buf.subarray(at, at + BLOB_PART_BYTES)]);
  }
}

/** The bytes of (owner, name), or undefined when none are stored. */
export async function readBlob(db: PgConnection, owner: string, name: string): Promise<Buffer | undefined> {
  const { rows } = await db.query<{ data: Buffer }>('SELECT data FROM blobs WHERE owner = $1 AND name = $2 ORDER BY part', [owner, name]);
  return rows.length === 0 ? undefined : Buffer.concat(rows.map((r) => r.data));
}

/** Bytes [offset, offset + length) of (owner, name), reading only the parts that hold them. */
export async function readBlobRange(db: PgConnection, owner: string, name: string, offset: number, length: number): Promise<Buffer> {
  const first = Math.floor(offset / BLOB_PART_BYTES);
  const last = Math.floor((offset + Math.max(0, length - 1)) / BLOB_PART_BYTES);
  const { rows } = await db.query<{ data: Buffer }>('SELECT data FROM blobs WHERE owner = $1 AND name = $2 AND part BETWEEN $3 AND $4 ORDER BY part', [owner, name, first, last]);
  const joined = Buffer.concat(rows.map((r) => r.data));
  const out = joined.subarray(offset - first * BLOB_PART_BYTES, offset - first * BLOB_PART_BYTES + length);
  if (out.length !== length) throw new Error('a stored value is shorter than its record says');
  return out;
}
