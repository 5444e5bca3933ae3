import type { JobConfig, ModelSpec } from '../../common/messages';
import type { SharedFailures } from '../AuthLimiter';
import type { HeadKey, JobRecord, StoredHead, UserSummary } from './records';

/**
 * What the server keeps, whichever store holds it: the file store (one data
 * folder, one server: the default, and the embedded server's) or PostgreSQL
 * (replicas sharing one database). Both pass test/integration/store.test.ts.
 * Records and keys live in records.ts; failures are StorageErrors.
 * Reads of the user list are answered from a snapshot (every upgrade checks a
 * token); everything else may reach the database.
 */
export interface Users {
  /** Creates a user and returns its token (shown once, never stored). */
  add(name: string): Promise<string>;
  revoke(name: string): Promise<void>;
  list(): Promise<UserSummary[]>;
  /** A token verified before whose user is still active, without scrypt (from the snapshot). */
  verifiedBefore(token: string | undefined): { name: string; since: string } | undefined;
  verify(token: string | undefined): Promise<{ name: string; since: string } | undefined>;
  /** When the active token of `name` was issued (from the snapshot), or undefined. */
  activeSince(name: string): string | undefined;
}

export interface Jobs {
  create(user: string, name: string, model: ModelSpec, config: JobConfig): Promise<JobRecord>;
  /** Deletes a job that never trained (its load failed right after create) with everything stored for it. */
  remove(rec: JobRecord): Promise<void>;
  /** Writes the job's record (conditional on this replica's lease where leases exist). */
  save(rec: JobRecord): Promise<void>;
  bytesOf(user: string, id?: string): Promise<number>;
  get(user: string, id: string): Promise<JobRecord | undefined>;
  list(user: string): Promise<JobRecord[]>;
  writeCheckpoint(rec: JobRecord, bytes: Uint8Array): Promise<void>;
  /** The stored checkpoints, newest first (at most two). */
  readCheckpoints(rec: JobRecord): Promise<Buffer[]>;
  writeAdapter(rec: JobRecord, bytes: Uint8Array): Promise<void>;
  readAdapter(rec: JobRecord): Promise<Buffer | undefined>;
  adapterInfo(rec: JobRecord): Promise<{ bytes: number; sha256: string } | undefined>;
  readAdapterPart(rec: JobRecord, offset: number, length: number): Promise<Buffer>;
}

export interface Heads {
  has(key: HeadKey): Promise<boolean>;
  save(key: HeadKey, rows: number, cols: number, norm: Float32Array, halves: Uint16Array, user?: string): Promise<void>;
  touch(key: HeadKey): Promise<void>;
  uploadedBytesOf(user: string): Promise<number>;
  removeUnused(maxAgeMs: number, inUse: ReadonlySet<string>, now?: number): Promise<number>;
  load(key: HeadKey): Promise<StoredHead>;
}

/**
 * Which replica trains a job. A lease carries a fencing token: every write of
 * the job's record, checkpoints or adapter is conditional on it, so a replica
 * that lost its lease cannot overwrite the new owner's state.
 */
export interface Leases {
  /**
   * Takes job `rec` for this replica: at once when no live replica holds it,
   * after its lease expires when its owner stopped renewing, and never from an
   * owner that renews (JOB_ELSEWHERE, naming the owner's address).
   */
  acquire(rec: JobRecord): Promise<void>;
  /** Gives the job up (unloaded, finished, cancelled). */
  release(rec: JobRecord): Promise<void>;
  /** Renews every lease held; returns the jobs (`user/id`) whose lease another replica took. */
  renew(): Promise<string[]>;
  /** Jobs of `user` that other live replicas hold now (the per-user job limit counts them). */
  heldElsewhere(user: string): Promise<number>;
  /** Calls `f` with a job's key (`user/id`) when this replica learns another took the job's lease. */
  onLost(f: (key: string) => void): void;
}

/** The replicas sharing a store: who is alive, where devices reach them, and their devices. */
export interface Replicas {
  /** This replica's id. */
  readonly id: string;
  /** Registers or refreshes this replica (with the address devices reach it at). */
  beat(advertise: string | undefined): Promise<void>;
  /** Counts a device session of `user` unless `max` are open on live replicas; false when refused. */
  openDevice(session: string, user: string, max: number): Promise<boolean>;
  closeDevice(session: string): Promise<void>;
  /** Called when users change on any replica (a revocation reaches every replica within a second). */
  onUsersChanged(listener: () => void): void;
}

/** One store, chosen at start. */
export interface ServerStore {
  readonly kind: 'file' | 'postgres';
  /** Where it lives, for logs and /healthz (a URL without its password). */
  readonly where: string;
  readonly users: Users;
  readonly jobs: Jobs;
  readonly heads: Heads;
  readonly leases: Leases;
  readonly replicas: Replicas;
  /** Failed sign-ins that every replica sees (undefined: one server, counted in its memory). */
  readonly authFailures?: SharedFailures;
  /** Seconds this process has waited for the store since it opened (the database's share of a replica's time). */
  busySeconds(): number;
  /** Whether the store answers now (a database query with a short timeout). */
  reachable(): Promise<boolean>;
  close(): Promise<void>;
}
