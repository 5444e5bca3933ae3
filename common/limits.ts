/** Wire limits and timings of the device <-> server protocol, in one place. */
export const PROTOCOL_VERSION = 9;
/** Largest binary frame either side accepts. */
export const MAX_FRAME_BYTES = 96 * 1024 * 1024;
/** Largest JSON header inside a frame. */
export const MAX_HEADER_BYTES = 64 * 1024;
/** Unacknowledged training batches a device may have in flight (credit). */
export const DEFAULT_CREDITS = 2;
/** Head rows per `head/chunk` frame (f16: rows * d * 2 bytes). */
export const HEAD_CHUNK_BYTES = 16 * 1024 * 1024;
/** Adapter bytes per `adapter/data` frame: an adapter of any size downloads in parts of this size. */
export const ADAPTER_CHUNK_BYTES = 16 * 1024 * 1024;
/** Ping interval; a peer silent for 3 intervals is dropped. */
export const HEARTBEAT_MS = 15_000;
/** How often the server looks for revoked tokens among open sessions. */
export const REVOCATION_CHECK_MS = 1000;
/** Replies queued for a device that does not read them, beyond which the server closes it. */
export const MAX_SEND_BUFFER_BYTES = 128 * 1024 * 1024;
/** A connection with no message for this long is closed. */
export const IDLE_TIMEOUT_MS = 10 * 60_000;

/** WebSocket close codes used for protocol violations (4000-4999 are application codes). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  TOO_BIG: 1009,
  BAD_FRAME: 4000,
  VERSION_MISMATCH: 4001,
  UNAUTHORIZED: 4003,
  LIMIT: 4008,
} as const;

/** Attention scores of one side-network block per batch (sequences x heads x seqLen^2) a version-2 job may ask for (float32: 256 MiB). */
export const MAX_ATTENTION_SCORES = 2 ** 26;

/** Tokens per training batch (seqLen x batchSize) the server accepts. */
export const MAX_ROWS_PER_BATCH = 65_536;

/** Longest evalId a device may use, and how many held-out results a job keeps (the oldest are dropped). */
export const MAX_EVAL_ID_CHARS = 64;
export const MAX_EVALS_PER_JOB = 16;
