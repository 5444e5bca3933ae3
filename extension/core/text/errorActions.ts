import type { ErrorCode } from '../MobiError';

/** Buttons a host offers with an error toast. */
export type ErrorAction = 'Open Settings' | 'Set Token' | 'Show Logs' | 'Retry';

/** The actions that help with an error, chosen by code (never by message text). */
export function actionsFor(code: ErrorCode): ErrorAction[] {
  switch (code) {
    case 'UNAUTHORIZED':
      return ['Set Token', 'Open Settings', 'Show Logs'];
    case 'SERVER_UNREACHABLE':
    case 'VERSION_MISMATCH':
    case 'CONNECTION_LOST':
      return ['Open Settings', 'Show Logs', 'Retry'];
    case 'MODEL_NOT_FOUND':
    case 'NOT_GGUF':
    case 'TRUNCATED_GGUF':
    case 'UNSUPPORTED_ARCHITECTURE':
    case 'MODEL_MISMATCH':
    case 'EMPTY_WORKSPACE':
    case 'BAD_ARGUMENT':
      return ['Open Settings', 'Show Logs'];
    case 'CANCELLED':
    case 'UP_TO_DATE':
      return [];
    default:
      return ['Show Logs', 'Retry'];
  }
}
