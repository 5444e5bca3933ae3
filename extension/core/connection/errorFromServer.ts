import type { ServerMessage } from '../../../common/messages';
import { MobiError } from '../MobiError';

/**
 * The one mapping of a server `error` message to the device's error codes:
 * every request and the training stream go through it.
 */
export function errorFromServer(m: ServerMessage<'error'>): MobiError {
  switch (m.code) {
    case 'UNAUTHORIZED':
      return new MobiError('UNAUTHORIZED', 'The server refused the token: set a valid token (ask your team admin).');
    case 'VERSION_MISMATCH':
      return new MobiError('VERSION_MISMATCH', `The server speaks another protocol version (${m.message}); update the extension or the server.`);
    case 'MODEL_MISMATCH':
      return new MobiError('MODEL_MISMATCH', `The server's job belongs to a different model file (${m.message}). Select the model the job was started with, or start a new job.`);
    case 'NO_SUCH_JOB':
      return new MobiError('NO_SUCH_JOB', 'The server does not know this job (or it belongs to someone else).');
    case 'JOB_ELSEWHERE':
      return new MobiError('JOB_MOVED', 'Another replica of the team server trains this job; reconnecting to it.', { location: m.location });
    case 'STORE_UNAVAILABLE':
      return new MobiError('STORE_UNAVAILABLE', 'The team server cannot reach its database; waiting for it (nothing is lost).');
    default:
      return new MobiError('SERVER_ERROR', `The server answered ${m.code}: ${m.message}`);
  }
}
