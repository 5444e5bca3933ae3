import { MobiError } from '../MobiError';
import type { JobContext } from './JobContext';

/**
 * Errors after which the job reconnects and resumes from the server's
 * checkpoint: the connection lost, the server away, the job moved to another
 * replica of a team server, or that server's database away for a while.
 */
const CONNECTION_ERRORS = new Set(['CONNECTION_LOST', 'SERVER_UNREACHABLE', 'JOB_MOVED', 'STORE_UNAVAILABLE']);
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
 * The address a team server named for a moved job, when the device may follow
 * it: a ws:// or wss:// URL on the host the user configured (another port or
 * path: a replica behind the same load balancer, or beside it), never a
 * downgrade from wss to ws. The token goes wherever the device connects, so a
 * server cannot send it to another host. Undefined otherwise.
 */
export function followable(configured: string | undefined, location: string | undefined): string | undefined {
  if (!configured || !location) return undefined;
  try {
    const from = new URL(configured);
    const to = new URL(location);
    if (to.protocol !== 'ws:' && to.protocol !== 'wss:') return undefined;
    if (from.protocol === 'wss:' && to.protocol !== 'wss:') return undefined;
    return to.hostname === from.hostname ? to.toString() : undefined;
  } catch {
    return undefined;
  }
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

  /** Runs `session` until it completes; `beforeRetry` runs before each new attempt, with the error that ended the last. */
  async run(session: () => Promise<void>, beforeRetry: (err: MobiError) => void = () => undefined): Promise<void> {
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
        // A job moved to a live replica is followed at once; anything else waits, longer each time.
        const wait = err.code === 'JOB_MOVED' && err.location ? 0 : delay;
        this.ctx.log(`connection lost (${err.code}); reconnecting in ${wait} ms`);
        this.ctx.setPhase('connecting');
        await sleep(wait, this.ctx.signal);
        this.ctx.checkCancelled();
        if (wait > 0) delay = Math.min(MAX_RETRY_MS, delay * 2);
        beforeRetry(err);
      }
    }
  }
}
