import { WebSocket } from 'ws';
import { decodeServerFrame, encodeFrameParts } from '../../../common/codec';
import { CloseCode, MAX_FRAME_BYTES, PROTOCOL_VERSION } from '../../../common/limits';
import { DeviceMessage, ModelSpec, Replies, Reply, ReplyOf, RequestType, ServerMessage, ServerMessageType } from '../../../common/messages';
import { WireError } from '../../../common/WireError';
import { errorFromServer } from './errorFromServer';
import { MobiError } from '../MobiError';

/**
 * The device's frames carry a zero masking key: masking keeps a browser's
 * script from steering what a proxy on the path sees, which a device client
 * does not run; with a key, ws copies every payload to mask it.
 */
function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

/** Connect timeout, milliseconds. */
export const CONNECT_TIMEOUT_MS = 15_000;

interface Waiter {
  type: ServerMessageType;
  match: (m: ServerMessage) => boolean;
  jobId?: string;
  /** A request's id: its reply, or an error, that echoes it settles this waiter, and nothing else does. */
  requestId?: number;
  resolve: (f: { message: ServerMessage; payload: Buffer }) => void;
  reject: (err: MobiError) => void;
}

/** The device's error for a connection the server closed with `code`. */
function errorOfClose(code: number, reason: string): MobiError {
  switch (code) {
    case CloseCode.VERSION_MISMATCH:
      return new MobiError('VERSION_MISMATCH', `The server closed the connection: ${reason || 'protocol version mismatch'}.`);
    case CloseCode.UNAUTHORIZED:
      return new MobiError('UNAUTHORIZED', 'The server closed the connection: this token was revoked. Ask your team admin for a new one.');
    case CloseCode.LIMIT:
      return new MobiError('SERVER_ERROR', `The server closed the connection at one of its limits (${reason || 'limit'}).`);
    default:
      return new MobiError('CONNECTION_LOST', 'The connection to the server was lost.');
  }
}

/**
 * The device's WebSocket connection to a side-tuning server. Sends typed
 * frames, counts bytes, and lets callers await typed replies. A dropped
 * connection rejects every waiter with CONNECTION_LOST.
 */
export class ServerConnection {
  bytesSent = 0;
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<(m: ServerMessage, payload: Buffer) => void>();
  private lost: MobiError | undefined;
  /** The id of the last request sent (requests are numbered from 1 on each connection). */
  private lastRequestId = 0;
  welcome!: ServerMessage<'session/welcome'>;
  /** Sees every frame exactly as sent (an audit tap: what crosses the wire). */
  onFrameSent: ((frame: Uint8Array) => void) | undefined;
  private readonly lostListeners = new Set<(err: MobiError) => void>();
  private closedByUs = false;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => this.onFrame(data));
    ws.on('close', (code, reason) => this.drop(errorOfClose(code, reason.toString())));
    ws.on('error', () => undefined);
  }

  /** Opens a connection and completes the hello/welcome exchange. */
  static async open(url: string, token: string, model: ModelSpec, options: { client?: string; protocol?: number; onFrameSent?: (frame: Uint8Array) => void } = {}): Promise<ServerConnection> {
    const ws = await new Promise<WebSocket>((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false, handshakeTimeout: CONNECT_TIMEOUT_MS, generateMask: zeroMask });
      } catch (err) {
        reject(new MobiError('SERVER_UNREACHABLE', `The server URL "${url}" is not valid (use ws://host:port or wss://host:port).`, { cause: err }));
        return;
      }
      ws.once('open', () => resolve(ws));
      ws.once('unexpected-response', (_req, res) => {
        ws.terminate();
        reject(
          res.statusCode === 401
            ? new MobiError('UNAUTHORIZED', 'The server refused the token (missing, wrong or revoked): set a valid token.')
            : res.statusCode === 429
              ? new MobiError('SERVER_ERROR', 'The server refused the connection: too many failed sign-ins or open connections for this user; try again in a minute.')
              : new MobiError('SERVER_UNREACHABLE', `The server answered HTTP ${res.statusCode} instead of accepting the connection.`),
        );
      });
      ws.once('error', (err) => reject(new MobiError('SERVER_UNREACHABLE', `Cannot reach the server at ${url}: is it running and is the URL right?`, { cause: err })));
    });
    const conn = new ServerConnection(ws);
    conn.onFrameSent = options.onFrameSent;
    conn.welcome = (await conn.request({ type: 'session/hello', protocol: options.protocol ?? PROTOCOL_VERSION, client: options.client ?? 'mobillm', model })).message;
    return conn;
  }

  /**
   * Sends a frame. Its payload is written as it is, not copied: it must not
   * change until `written` is called (once the socket has taken it, or with
   * the error that stopped it).
   */
  send(message: DeviceMessage, payload?: Uint8Array, written?: (err?: Error) => void): void {
    const parts = this.frame(message, payload);
    // Header and payload as two fragments of one message: the payload is not copied into a frame.
    if (parts.length === 2) this.ws.send(parts[0], { binary: true, fin: false });
    this.ws.send(parts[parts.length - 1]!, { binary: true, fin: true }, written);
  }

  /**
   * Sends and resolves once the frame has been written to the socket: a bulk
   * upload (the head) awaits each part, so at most one part waits in memory.
   */
  sendFlushed(message: DeviceMessage, payload?: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.send(message, payload, (err) => (err ? reject(this.lost ?? new MobiError('CONNECTION_LOST', 'The connection closed while sending.', { cause: err })) : resolve()));
    });
  }

  private frame(message: DeviceMessage, payload?: Uint8Array): Buffer[] {
    if (this.lost) throw this.lost;
    const parts = encodeFrameParts(message, payload);
    this.bytesSent += parts.reduce((a, p) => a + p.length, 0);
    this.onFrameSent?.(Buffer.concat(parts));
    return parts;
  }

  /** Resolves with the next streamed message of `type` that matches (not a request's reply); rejects on a matching error or a drop. */
  expect<T extends ServerMessageType>(type: T, match: (m: ServerMessage<T>) => boolean = () => true, jobId?: string): Promise<{ message: ServerMessage<T>; payload: Buffer }> {
    return this.wait({ type, match: match as (m: ServerMessage) => boolean, jobId });
  }

  private wait<T extends ServerMessageType>(w: Omit<Waiter, 'resolve' | 'reject'>): Promise<{ message: ServerMessage<T>; payload: Buffer }> {
    if (this.lost) return Promise.reject(this.lost);
    return new Promise((resolve, reject) => {
      this.waiters.add({ ...w, resolve: resolve as Waiter['resolve'], reject });
    });
  }

  /**
   * Sends a request with the next request id and awaits the reply that echoes
   * it (common/messages.ts `Replies` says which type that is), or the error
   * that answers it.
   */
  request<R extends RequestType>(message: DeviceMessage<R>, payload?: Uint8Array): Promise<Required<Reply<R, Buffer>>> {
    const requestId = ++this.lastRequestId;
    const p = this.wait<ReplyOf<R>>({ type: Replies[message.type as R], match: () => true, requestId, ...('jobId' in message ? { jobId: message.jobId } : {}) });
    this.send({ ...message, requestId }, payload);
    return p as Promise<Required<Reply<R, Buffer>>>;
  }

  /** Calls `listener` once if the connection drops (not after close()); returns the unsubscribe function. */
  onLost(listener: (err: MobiError) => void): () => void {
    this.lostListeners.add(listener);
    return () => this.lostListeners.delete(listener);
  }

  /** Every message, as it arrives (acks, checkpoints, errors). */
  subscribe(listener: (m: ServerMessage, payload: Buffer) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private onFrame(data: Buffer): void {
    let frame;
    try {
      frame = decodeServerFrame(data);
    } catch (err) {
      const e = err instanceof WireError ? err : undefined;
      this.ws.terminate();
      this.drop(new MobiError(e?.code === 'VERSION_MISMATCH' ? 'VERSION_MISMATCH' : 'SERVER_ERROR', `The server sent a frame this device cannot read (${e?.message ?? 'bad frame'}).`));
      return;
    }
    const { message, payload } = frame;
    for (const l of this.listeners) l(message, payload);
    if (message.type === 'error') {
      const err = errorFromServer(message);
      for (const w of [...this.waiters]) {
        // An error that answers a request settles that request only; any other settles the waiters of its job (all, without one).
        const hit = message.requestId !== undefined ? w.requestId === message.requestId : message.jobId === undefined || w.jobId === undefined || w.jobId === message.jobId;
        if (hit) {
          this.waiters.delete(w);
          w.reject(err);
        }
      }
      return;
    }
    const requestId = 'requestId' in message ? message.requestId : undefined;
    for (const w of this.waiters) {
      if (w.type === message.type && w.requestId === requestId && w.match(message)) {
        this.waiters.delete(w);
        w.resolve({ message, payload });
        return;
      }
    }
  }

  private drop(err: MobiError): void {
    if (this.lost) return;
    this.lost = err;
    for (const w of this.waiters) w.reject(err);
    this.waiters.clear();
    if (!this.closedByUs) for (const l of [...this.lostListeners]) l(err);
  }

  get isOpen(): boolean {
    return !this.lost;
  }

  close(): void {
    this.closedByUs = true;
    this.ws.close(1000);
    this.drop(new MobiError('CONNECTION_LOST', 'The connection was closed.'));
  }
}
