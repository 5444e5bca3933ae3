import type { ServerMessage } from '../../../common/messages';
import { errorFromServer } from '../connection/errorFromServer';
import { MobiError } from '../MobiError';
import type { ServerConnection } from '../connection/ServerConnection';

/**
 * The device's side of credit-based flow control for one job on one
 * connection: at most `credits` training batches unacknowledged. `acquire()`
 * waits for a free credit, `drain()` for every acknowledgement; both fail at
 * once with the server's error for this job (mapped by errorFromServer) or
 * with the connection's loss. dispose() once, when the stream ends.
 */
/** What the window needs of a connection. */
export type CreditSource = Pick<ServerConnection, 'subscribe' | 'onLost' | 'isOpen'>;

export class CreditWindow {
  private readonly inFlight = new Set<number>();
  private failure: MobiError | undefined;
  private wake: (() => void) | undefined;
  private readonly unsubscribe: (() => void)[];

  constructor(
    conn: CreditSource,
    private readonly jobId: string,
    readonly credits: number,
    /** Called for each acknowledgement of this job, in arrival order. */
    private readonly onAck: (ack: ServerMessage<'batch/ack'>) => void,
    /** Called when the server says a batch of this job waits for its training worker behind `ahead` operations of other jobs. */
    private readonly onWaiting: (ahead: number) => void = () => undefined,
  ) {
    this.unsubscribe = [
      conn.subscribe((m) => this.onMessage(m)),
      conn.onLost((err) => this.fail(err)),
    ];
    if (!conn.isOpen) this.fail(new MobiError('CONNECTION_LOST', 'The connection to the server was lost.'));
  }

  /** Unacknowledged batches now. */
  get size(): number {
    return this.inFlight.size;
  }

  /** Resolves when a batch may be sent. */
  acquire(): Promise<void> {
    return this.until(() => this.inFlight.size < this.credits);
  }

  /** Records that batch `index` was sent (it holds a credit until acknowledged). */
  sent(index: number): void {
    this.inFlight.add(index);
  }

  /** Resolves when every sent batch was acknowledged. */
  drain(): Promise<void> {
    return this.until(() => this.inFlight.size === 0);
  }

  dispose(): void {
    for (const u of this.unsubscribe) u();
    this.unsubscribe.length = 0;
  }

  private onMessage(m: ServerMessage): void {
    if (m.type === 'batch/ack' && m.jobId === this.jobId) {
      this.inFlight.delete(m.index);
      this.onAck(m);
    } else if (m.type === 'job/waiting' && m.jobId === this.jobId) {
      this.onWaiting(m.ahead);
    } else if (m.type === 'error' && (m.jobId === undefined || m.jobId === this.jobId)) {
      this.failure ??= errorFromServer(m);
    }
    this.wake?.();
  }

  /** Fails the window (acquire and drain reject with `err`). */
  fail(err: MobiError): void {
    this.failure ??= err;
    this.wake?.();
  }

  private async until(ready: () => boolean): Promise<void> {
    for (;;) {
      if (this.failure) throw this.failure;
      if (ready()) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}
