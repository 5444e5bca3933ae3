import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Prometheus metrics of one server instance (its own registry: several servers may share a process in tests). */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({ name: 'mobillm_connections', help: 'Open device connections', registers: [this.registry] });
  readonly jobsActive = new Gauge({ name: 'mobillm_jobs_active', help: 'Jobs loaded for training', registers: [this.registry] });
  readonly jobsCreated = new Counter({ name: 'mobillm_jobs_created_total', help: 'Jobs created', registers: [this.registry] });
  readonly steps = new Counter({ name: 'mobillm_train_steps_total', help: 'Optimizer steps applied', registers: [this.registry] });
  readonly tokens = new Counter({ name: 'mobillm_train_tokens_total', help: 'Training tokens consumed', registers: [this.registry] });
  readonly tokensPerSecond = new Gauge({ name: 'mobillm_train_tokens_per_second', help: 'Training tokens per second of the last step', registers: [this.registry] });
  readonly bytesReceived = new Counter({ name: 'mobillm_bytes_received_total', help: 'Bytes received from devices', registers: [this.registry] });
  readonly errors = new Counter({ name: 'mobillm_errors_total', help: 'Errors sent to devices, by code', labelNames: ['code'], registers: [this.registry] });
  readonly engine = new Gauge({ name: 'mobillm_engine_info', help: 'The training engine and execution provider in use (1)', labelNames: ['engine', 'provider'], registers: [this.registry] });
  readonly replica = new Gauge({ name: 'mobillm_replica_info', help: 'This replica and the kind of store it uses (1)', labelNames: ['replica', 'store'], registers: [this.registry] });
  readonly storeReachable = new Gauge({ name: 'mobillm_store_reachable', help: 'Whether the store answered the last check (1) or not (0)', registers: [this.registry] });
  readonly storeBusy = new Gauge({ name: 'mobillm_store_busy_seconds', help: 'Seconds spent waiting for the store (PostgreSQL) since start', registers: [this.registry] });
  readonly authFailures = new Counter({ name: 'mobillm_auth_failures_total', help: 'Refused connection attempts', registers: [this.registry] });
  readonly leaseLosses = new Counter({ name: 'mobillm_lease_losses_total', help: 'Jobs this replica stopped because another replica took their lease', registers: [this.registry] });
  readonly loopDelay = new Histogram({
    name: 'mobillm_event_loop_delay_seconds',
    help: 'How late the main thread ran a timer due every 20 ms (LoopDelayProbe)',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
    registers: [this.registry],
  });
  /** The largest timer lateness since the last scrape, seconds. */
  private maxLoopDelay = 0;
  readonly loopDelayMax = new Gauge({
    name: 'mobillm_event_loop_delay_max_seconds',
    help: 'The largest lateness of the main thread\'s 20 ms timer since the last scrape',
    registers: [this.registry],
    collect: () => {
      this.loopDelayMax.set(this.maxLoopDelay);
      this.maxLoopDelay = 0;
    },
  });

  /** A timer lateness (seconds), for the since-the-last-scrape maximum. */
  noteLoopDelay(seconds: number): void {
    if (seconds > this.maxLoopDelay) this.maxLoopDelay = seconds;
  }
}
