/**
 * The one error class of the stores (file and PostgreSQL) while the server
 * runs: a stable code and a message that holds no data and no text. The
 * stores know nothing of the wire; the session turns these into wire errors
 * (server/wireErrorOf.ts). Set-up and admin failures (a user that exists, a
 * database that cannot be opened) stay ServerErrors, which the admin CLI prints.
 */
export const STORAGE_ERROR_CODES = [
  'BAD_KEY', // a job id or model key that is not one (it never reaches a file name or a query)
  'WRITE_FAILED', // the disk or the database refused a write (a full disk); what was stored before is kept
  'DAMAGED', // a stored value has the wrong size or content
  'NO_SUCH_JOB', // no such job for this user
  'LEASE_LOST', // another replica took this job's lease: this replica must stop training it
  'HELD_ELSEWHERE', // another live replica trains the job (`location`: where devices reach it, when known)
  'UNAVAILABLE', // the database cannot be reached now; nothing stored is lost
] as const;
export type StorageErrorCode = (typeof STORAGE_ERROR_CODES)[number];

export class StorageError extends Error {
  constructor(
    readonly code: StorageErrorCode,
    message: string,
    /** HELD_ELSEWHERE: the address (ws:// or wss://) of the replica that trains the job, when known. */
    readonly location?: string,
  ) {
    super(message);
    this.name = 'StorageError';
  }
}
