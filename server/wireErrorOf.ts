import { WireError, WireErrorCode } from '../common/WireError';
import { StorageError, StorageErrorCode } from './storage/StorageError';

/** What a device is told for each store failure (every code has its row: the compiler checks it). */
const WIRE_CODE_OF: Record<StorageErrorCode, WireErrorCode> = {
  BAD_KEY: 'BAD_FRAME',
  WRITE_FAILED: 'STORAGE',
  DAMAGED: 'STORAGE',
  NO_SUCH_JOB: 'NO_SUCH_JOB',
  LEASE_LOST: 'JOB_ELSEWHERE',
  HELD_ELSEWHERE: 'JOB_ELSEWHERE',
  UNAVAILABLE: 'STORE_UNAVAILABLE',
};

/**
 * A failure as the device hears it: a wire error as it is, a store failure
 * turned into its wire code (the message, which holds no data, kept), and
 * undefined for anything else (the session answers INTERNAL and logs it).
 */
export function wireErrorOf(err: unknown): WireError | undefined {
  if (err instanceof WireError) return err;
  if (err instanceof StorageError) return new WireError(WIRE_CODE_OF[err.code], err.message, false, err.location);
  return undefined;
}
