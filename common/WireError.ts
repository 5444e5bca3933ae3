/**
 * Typed errors that cross the wire. The server sends `{type: "error", code,
 * message}` and, for protocol violations, closes the socket with a WebSocket
 * status. No stack traces and no data are ever sent.
 */
export const WIRE_ERROR_CODES = [
  'BAD_FRAME', // not decodable: truncated, wrong header, wrong field types
  'TOO_BIG', // over MAX_FRAME_BYTES
  'VERSION_MISMATCH', // protocol version the server does not speak
  'UNAUTHORIZED', // no, wrong or revoked token
  'UNKNOWN_TYPE', // a message type that does not exist
  'OUT_OF_ORDER', // a valid message at the wrong time (e.g. a batch before hello)
  'NO_CREDIT', // more unacknowledged batches than the credit allows
  'HEAD_MISSING', // a job needs the model head, which was not uploaded
  'MODEL_MISMATCH', // a batch or job does not fit the session's model
  'NO_SUCH_JOB', // unknown job, or a job of another user
  'JOB_STATE', // the job cannot do that now (finished, cancelled, running elsewhere)
  'LIMIT', // a server limit (jobs per user, devices)
  'NON_FINITE', // training produced non-finite numbers several steps in a row and stopped
  'STORAGE', // the server could not store or read a checkpoint or adapter (a full disk); nothing stored is lost
  'INTERNAL', // the server failed on this request
  'JOB_ELSEWHERE', // another replica trains this job: `location` is its address (or the job moved there); reconnect and resume
  'STORE_UNAVAILABLE', // the server's database is unreachable: nothing is lost; wait, reconnect and resume
] as const;
export type WireErrorCode = (typeof WIRE_ERROR_CODES)[number];

export class WireError extends Error {
  constructor(
    readonly code: WireErrorCode,
    message: string,
    readonly fatal = false,
    /** JOB_ELSEWHERE: the address (ws:// or wss://) of the replica that trains the job, when known. */
    readonly location?: string,
  ) {
    super(message);
    this.name = 'WireError';
  }
}
