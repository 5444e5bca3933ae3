import type { ServerMetrics } from './ServerMetrics';

/** How often the probe's timer is due, milliseconds. */
export const LOOP_PROBE_MS = 20;

/**
 * Measures how late the server's main thread runs a timer due every
 * LOOP_PROBE_MS: each tick's lateness goes into the
 * `mobillm_event_loop_delay_seconds` histogram (cumulative: a reader takes
 * the difference of two scrapes) and the largest since the last scrape into
 * `mobillm_event_loop_delay_max_seconds`. A main thread that only holds
 * sockets, sign-ins, storage and scheduling answers within milliseconds.
 */
export class LoopDelayProbe {
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly metrics: ServerMetrics) {}

  start(): void {
    let due = performance.now() + LOOP_PROBE_MS;
    this.timer = setInterval(() => {
      const now = performance.now();
      const late = Math.max(0, now - due) / 1000;
      this.metrics.loopDelay.observe(late);
      this.metrics.noteLoopDelay(late);
      due = now + LOOP_PROBE_MS;
    }, LOOP_PROBE_MS);
    this.timer.unref();
  }

  dispose(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
