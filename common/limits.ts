/** Wire limits and timings of the device <-> server protocol, in one place. */
export const PROTOCOL_VERSION = 2;
/** Largest binary frame either side accepts. */
export const MAX_FRAME_BYTES = 96 * 1024 * 1024;
/** Largest JSON header inside a frame. */
export const MAX_HEADER_BYTES = 64 * 1024;
/** Unacknowledged training batches a device may have in flight (credit). */
export const DEFAULT_CREDITS = 2;
/** Head rows per `head/chunk` frame (f16: rows * d * 2 bytes). */
export const HEAD_CHUNK_BYTES = 16 * 1024 * 1024;
/** Ping interval; a peer silent for 3 intervals is dropped. */
export const HEARTBEAT_MS = 15_000;
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
