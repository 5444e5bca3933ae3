import { MobiError } from '../MobiError';
import type { JobContext } from './JobContext';

/** Errors after which the job reconnects and resumes from the server's checkpoint. */
const CONNECTION_ERRORS = new Set(['CONNECTION_LOST', 'SERVER_UNREACHABLE']);
/** First and longest wait between reconnection attempts, milliseconds (the wait doubles). */
const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

/**
 * Runs a session script again after a lost connection, with exponential
 * backoff, until it completes or the outage has lasted longer than
 * `timeoutMs`. An outage starts at the first failure and ends when the script
 * reports `connected()`. A server that was never reached is not retried: the
 * URL or the server is wrong.
 */
export class ReconnectPolicy {
  private outageStartedAt: number | undefined;

  constructor(
    private readonly ctx: JobContext,
    private readonly timeoutMs: number,
    /** Whether the job has been reached on a server before (then an unreachable server is retried). */
    private readonly everConnected: () => boolean,
    private readonly now: () => number = Date.now,
  ) {}

  /** The script reached the server: a later drop starts a new outage. */
  connected(): void {
    this.outageStartedAt = undefined;
  }

  /** Runs `session` until it completes; `beforeRetry` runs before each new attempt. */
  async run(session: () => Promise<void>, beforeRetry: () => void = () => undefined): Promise<void> {
    let delay = FIRST_RETRY_MS;
    for (;;) {
      try {
        await session();
        return;
      } catch (err) {
        if (!(err instanceof MobiError) || !CONNECTION_ERRORS.has(err.code) || this.ctx.signal?.aborted) throw err;
        if (!this.everConnected() && err.code === 'SERVER_UNREACHABLE') throw err;
        this.outageStartedAt ??= this.now();
        if (this.now() - this.outageStartedAt > this.timeoutMs) {
          throw new MobiError('CONNECTION_LOST', `Lost the server and could not reconnect for ${Math.round(this.timeoutMs / 1000)} s. The job keeps its last checkpoint; resume it later.`, { cause: err });
        }
        this.ctx.log(`connection lost (${err.code}); reconnecting in ${delay} ms`);
        this.ctx.setPhase('connecting');
        await sleep(delay, this.ctx.signal);
        this.ctx.checkCancelled();
        delay = Math.min(MAX_RETRY_MS, delay * 2);
        beforeRetry();
      }
    }
  }
}
