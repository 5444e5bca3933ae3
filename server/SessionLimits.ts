import { DEFAULT_CREDITS } from '../common/limits';

/** Limits one device session enforces. */
export interface SessionLimits {
  /** Unacknowledged training batches per device. */
  credits: number;
  /** Jobs one user may have loaded at once (training, or loaded to evaluate). */
  maxJobsPerUser: number;
  /** Memory one loaded job may take (jobMemoryBytes of its config). */
  maxJobMemoryBytes: number;
  /** Memory all loaded jobs of one user may take together. */
  maxUserMemoryBytes: number;
  /** Disk one user's jobs (records, checkpoints, adapters) and the heads they uploaded may take. */
  maxUserStorageBytes: number;
  /** Adapter bytes per adapter/data frame. Default ADAPTER_CHUNK_BYTES. */
  adapterChunkBytes?: number;
  /** Replies queued for a device that does not read them, beyond which the session is closed. Default MAX_SEND_BUFFER_BYTES. */
  maxSendBufferBytes?: number;
}

/** The limits a server uses unless told otherwise (server options, `mobillm-server start` flags). */
export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  credits: DEFAULT_CREDITS,
  maxJobsPerUser: 4,
  /** Fits a 7B-shaped job at the default reduction (about 3.6 GiB by jobMemoryBytes). */
  maxJobMemoryBytes: 4 * 2 ** 30,
  maxUserMemoryBytes: 8 * 2 ** 30,
  /** Several 7B-shaped jobs (about 1.6 GB each) and a 7B head (1.1 GB). */
  maxUserStorageBytes: 16 * 2 ** 30,
};
