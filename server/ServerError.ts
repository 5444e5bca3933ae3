/**
 * The one error class of the server outside the wire (the wire has WireError):
 * set-up, storage and admin failures, each with a stable code the admin CLI
 * prints as `error[CODE]: message`. Messages hold no data and no text.
 */
export const SERVER_ERROR_CODES = [
  'BAD_NAME', // a user name outside the allowed characters
  'EXISTS', // the user exists already
  'NO_SUCH_USER', // no active user of that name
  'BAD_CONFIG', // server options that cannot work together
  'NO_BACKEND', // no training backend could start
  'DAMAGED_FILE', // a stored file has the wrong size or content
  'BAD_PARAMETER', // a side-network parameter name or value that does not exist
  'DATABASE_UNREACHABLE', // the PostgreSQL server at --database did not answer (the message names it without its password)
  'DATABASE_SCHEMA', // the database holds a newer schema than this server knows
] as const;
export type ServerErrorCode = (typeof SERVER_ERROR_CODES)[number];

export class ServerError extends Error {
  constructor(readonly code: ServerErrorCode, message: string) {
    super(message);
    this.name = 'ServerError';
  }
}
