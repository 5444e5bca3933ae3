import { randomBytes, randomUUID, scryptSync } from 'node:crypto';
import type { JobState } from '../../common/JobState';
import type { JobConfig, ModelSpec } from '../../common/messages';
import { UUID_PATTERN } from '../../common/schema';
import { ServerError } from '../ServerError';
import { StorageError } from './StorageError';

/**
 * What the server stores, whichever store keeps it (file/ or pg/): the
 * records, their keys and the checks on those keys, how a record is created
 * and how a model head is encoded. Both stores import this module; nothing
 * here knows where records live.
 */

// Jobs

/** A job's record: numbers and settings only, never data. */
export interface JobRecord {
  id: string;
  user: string;
  name: string;
  model: ModelSpec;
  config: JobConfig;
  state: JobState;
  /** Optimizer steps in the last checkpoint. */
  step: number;
  /** First batch index not in the last checkpoint. */
  nextIndex: number;
  trainTokens: number;
  /** Steps skipped for a non-finite loss or gradient. */
  skippedSteps?: number;
  createdAt: string;
  updatedAt: string;
  /** Held-out results by evalId (loss sums and token counts). */
  evals: Record<string, { lossSum: number; tokens: number }>;
  /** The finished job's adapter: its size and sha256. */
  adapter?: { bytes: number; sha256: string };
}

export const JOB_ID_PATTERN = UUID_PATTERN;

/** Longest job name kept (a longer one is cut). */
const MAX_JOB_NAME_CHARS = 200;

/** A new job's record, training from step 0 (not yet stored). */
export function newJobRecord(user: string, name: string, model: ModelSpec, config: JobConfig): JobRecord {
  const now = new Date().toISOString();
  return { id: randomUUID(), user, name: name.slice(0, MAX_JOB_NAME_CHARS), model, config, state: 'training', step: 0, nextIndex: 0, trainTokens: 0, createdAt: now, updatedAt: now, evals: {} };
}

/** A job's key (`user/id`): the registry's, and what lease reports name. */
export const jobKey = (rec: Pick<JobRecord, 'user' | 'id'>): string => `${rec.user}/${rec.id}`;

// Users

export interface UserRecord {
  name: string;
  salt: string;
  /** scrypt(secret, salt), hex. The token itself is never stored. */
  hash: string;
  createdAt: string;
  revokedAt?: string;
}

export interface UserSummary {
  name: string;
  createdAt: string;
  revoked: boolean;
}

export const USER_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/;
/** Bytes of a token's scrypt hash. */
export const SCRYPT_KEYLEN = 32;

/** A new user record for `name` and its token (`<name>.<secret>`; only scrypt(secret) is kept). BAD_NAME for a name outside the pattern. */
export function newUser(name: string): { record: UserRecord; token: string } {
  if (!USER_NAME_PATTERN.test(name)) throw new ServerError('BAD_NAME', 'User names are 1-32 characters: a-z, 0-9, "-" and "_".');
  const secret = randomBytes(24).toString('base64url');
  const salt = randomBytes(16).toString('hex');
  const hash = scryptSync(secret, salt, SCRYPT_KEYLEN).toString('hex');
  return { record: { name, salt, hash, createdAt: new Date().toISOString() }, token: `${name}.${secret}` };
}

// Model heads

/** A model's frozen final norm and head, as the server keeps them. */
export interface StoredHead {
  rows: number;
  cols: number;
  norm: Float32Array; // [cols]; for a LayerNorm (ModelSpec.normKind 'layer') [2 cols]: the weight, then the bias
  /** The head as float16 bits, as uploaded: [rows][cols]. */
  halves: Uint16Array;
}

export const FINGERPRINT_PATTERN = /^[0-9a-f]{64}$/;

/** What names a stored head: the model file and the digest of the head's content. */
export type HeadKey = Pick<ModelSpec, 'fingerprint' | 'headDigest'>;

/** The name a head is stored under (`<fingerprint>.<headDigest>.head`: the file store's file, the database's key); BAD_KEY for a key that is not two digests. */
export function headName(key: HeadKey): string {
  if (!FINGERPRINT_PATTERN.test(key.fingerprint) || !FINGERPRINT_PATTERN.test(key.headDigest)) throw new StorageError('BAD_KEY', 'model fingerprint and head digest must be 64 hex digits');
  return `${key.fingerprint}.${key.headDigest}.head`;
}

/** The key a stored head's name holds, or undefined for another name. */
export function headKeyOf(name: string): HeadKey | undefined {
  const m = /^([0-9a-f]{64})\.([0-9a-f]{64})\.head$/.exec(name);
  return m ? { fingerprint: m[1]!, headDigest: m[2]! } : undefined;
}

/** Values in a model's stored norm: its weight [cols], then a LayerNorm's bias [cols] (ModelSpec.normKind 'layer'). */
export function normValuesOf(model: Pick<ModelSpec, 'normKind'>, cols: number): number {
  return model.normKind === 'layer' ? 2 * cols : cols;
}

/** Bytes a stored head of rows x cols takes (`normValues`: normValuesOf). */
export function headBytes(rows: number, cols: number, normValues = cols): number {
  return 8 + 4 * normValues + 2 * rows * cols;
}

/** A head as stored: u32 rows, u32 cols, f32 norm[cols] (or [2 cols]: weight, then a LayerNorm's bias), f16 head[rows][cols], little-endian. */
export function encodeHead(rows: number, cols: number, norm: Float32Array, halves: Uint16Array): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(rows, 0);
  header.writeUInt32LE(cols, 4);
  return Buffer.concat([header, Buffer.from(norm.buffer, norm.byteOffset, norm.byteLength), Buffer.from(halves.buffer, halves.byteOffset, halves.byteLength)]);
}

/** A stored head's bytes as arrays; DAMAGED when the size is wrong. */
export function parseHead(buf: Buffer): StoredHead {
  if (buf.length < 8) throw new StorageError('DAMAGED', 'a stored model head is cut short; delete it and let a device upload it again');
  const rows = buf.readUInt32LE(0);
  const cols = buf.readUInt32LE(4);
  const normValues = buf.length === headBytes(rows, cols, 2 * cols) ? 2 * cols : cols;
  if (buf.length !== headBytes(rows, cols, normValues)) throw new StorageError('DAMAGED', 'a stored model head has the wrong size; delete it and let a device upload it again');
  const norm = new Float32Array(normValues);
  Buffer.from(norm.buffer).set(buf.subarray(8, 8 + 4 * normValues));
  const at = buf.byteOffset + 8 + 4 * normValues;
  // A view when aligned (large files get their own buffer), else one copy.
  const halves = at % 2 === 0 ? new Uint16Array(buf.buffer, at, rows * cols) : new Uint16Array(Uint8Array.from(buf.subarray(8 + 4 * normValues)).buffer);
  return { rows, cols, norm, halves };
}
