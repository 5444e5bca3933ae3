import type { Heads, Jobs } from './storage/Store';
import { JobRegistry } from './JobRegistry';
import { ServerMetrics } from './ServerMetrics';
import type { SessionLimits } from './SessionLimits';

/**
 * What a device session may use of the server: the stores, the registry of
 * loaded jobs, metrics, the log and the limits. It does not know the HTTP
 * server, the other sessions or how the server starts and stops.
 */
export interface SessionContext {
  readonly heads: Heads;
  readonly jobs: Jobs;
  readonly registry: JobRegistry;
  readonly metrics: ServerMetrics;
  readonly limits: SessionLimits;
  /** The training backend's name, as reported to devices. */
  readonly backend: string;
  /** One line per event: numbers and ids only, never data or text. */
  log(line: string): void;
}
