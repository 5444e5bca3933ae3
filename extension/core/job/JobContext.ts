import type { JobPhase } from './JobProgress';

/** What a part of a fine-tuning job may do to the job as a whole: log, change phase, honour cancellation. */
export interface JobContext {
  /** One line per event: numbers only, never source text. */
  log(line: string): void;
  /** Enters a phase (logged and reported to the host). */
  setPhase(phase: JobPhase): void;
  /** Throws CANCELLED when the user cancelled the job. */
  checkCancelled(): void;
  /** Aborted when the user cancels. */
  readonly signal: AbortSignal | undefined;
}
