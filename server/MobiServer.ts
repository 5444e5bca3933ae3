import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { AddressInfo } from 'node:net';
import { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import { CloseCode, HEARTBEAT_MS, IDLE_TIMEOUT_MS, MAX_FRAME_BYTES, REVOCATION_CHECK_MS } from '../common/limits';
import { removeStaleTemporaries } from '../common/atomicWrite';
import { AuthLimiter } from './AuthLimiter';
import { ServerMetrics } from './ServerMetrics';
import { DeviceSession } from './DeviceSession';
import { JobRegistry } from './JobRegistry';
import { ServerError } from './ServerError';
import { SessionContext } from './SessionContext';
import { DEFAULT_SESSION_LIMITS } from './SessionLimits';
import { HeadStore } from './storage/HeadStore';
import { JobStore } from './storage/JobStore';
import { UserStore } from './storage/UserStore';
import { ExecutionDevice, OnnxEngine } from './training/onnx/OnnxEngine';

/** How long a stored model head no job uses is kept. */
export const HEAD_TTL_MS = 30 * 86_400_000;

/** Options of the side-tuning server. */
export interface MobiServerOptions {
  /** Data folder: users, heads, jobs (checkpoints and adapters). */
  dataDir: string;
  /** Bind address. Default 127.0.0.1. */
  host?: string;
  /** Port; 0 picks a free one. Default 8787. */
  port?: number;
  /** TLS certificate and key files (PEM); both or neither. */
  tlsCert?: string;
  tlsKey?: string;
  /** Unacknowledged training batches per device. Default DEFAULT_CREDITS. */
  credits?: number;
  /** Jobs one user may have loaded at once. Default DEFAULT_SESSION_LIMITS. */
  maxJobsPerUser?: number;
  /** Memory one job may take, estimated from its config (jobMemoryBytes). Default DEFAULT_SESSION_LIMITS (4 GiB). */
  maxJobMemoryBytes?: number;
  /** Memory all loaded jobs of one user may take together. Default DEFAULT_SESSION_LIMITS (8 GiB). */
  maxUserMemoryBytes?: number;
  /** Adapter bytes per adapter/data frame. Default ADAPTER_CHUNK_BYTES. */
  adapterChunkBytes?: number;
  /** Disk one user's jobs and uploaded heads may take. Default DEFAULT_SESSION_LIMITS (16 GiB). */
  maxUserStorageBytes?: number;
  /** A stored head no job used for this long is deleted (a device uploads it again when needed). Default HEAD_TTL_MS (30 days). */
  headTtlMs?: number;
  /** Open device connections. Default 64. */
  maxDevices?: number;
  /** Open device connections of one user. Default 8. */
  maxDevicesPerUser?: number;
  /** Close a connection silent for this long. Default IDLE_TIMEOUT_MS. */
  idleTimeoutMs?: number;
  /** Execution provider of the training engine. Default 'cpu'. */
  device?: ExecutionDevice;
  /** CPU threads of the training engine. Default: every core. */
  threads?: number;
  /** Write one line per event (no data, no text) here. Default: nothing. */
  log?: (line: string) => void;
}

/**
 * The team's side-tuning server: WebSocket (binary frames) for devices,
 * `GET /healthz`, `GET /metrics`. Authentication happens on the HTTP upgrade,
 * before any message is read.
 */
export class MobiServer {
  readonly users: UserStore;
  readonly heads: HeadStore;
  readonly jobs: JobStore;
  readonly metrics = new ServerMetrics();
  /** The training engine and the jobs it holds; made by start(). */
  private engine: OnnxEngine | undefined;
  private registry: JobRegistry | undefined;
  backend = 'unknown';
  private readonly http: http.Server | https.Server;
  private readonly wss: WebSocketServer;
  private readonly sessions = new Set<DeviceSession>();
  /** What sessions may use; made by start(), once the backend is known. */
  private context: SessionContext | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private revocations: NodeJS.Timeout | undefined;
  private readonly authLimiter = new AuthLimiter();
  private closing = false;

  constructor(readonly options: MobiServerOptions) {
    fs.mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    this.users = new UserStore(options.dataDir);
    this.heads = new HeadStore(options.dataDir);
    this.jobs = new JobStore(options.dataDir);
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => void this.onRequest(req, res);
    if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) throw new ServerError('BAD_CONFIG', 'TLS needs both --tls-cert and --tls-key');
    this.http = options.tlsCert
      ? https.createServer({ cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey!) }, handler)
      : http.createServer(handler);
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });
    this.http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
  }

  log(line: string): void {
    this.options.log?.(`${new Date().toISOString()} ${line}`);
  }

  async start(): Promise<{ url: string; port: number }> {
    const stale = removeStaleTemporaries(this.options.dataDir);
    if (stale > 0) this.log(`removed ${stale} unfinished temporary files left by an earlier process`);
    const engine = await OnnxEngine.create({ device: this.options.device, threads: this.options.threads });
    this.engine = engine;
    this.backend = engine.name;
    this.metrics.engine.set({ engine: 'onnxruntime', provider: engine.device }, 1);
    this.registry = new JobRegistry(engine, this.jobs, this.heads, (n) => this.metrics.jobsActive.set(n));
    this.expireHeads();
    this.context = {
      heads: this.heads,
      jobs: this.jobs,
      registry: this.registry,
      metrics: this.metrics,
      limits: {
        credits: this.options.credits ?? DEFAULT_SESSION_LIMITS.credits,
        maxJobsPerUser: this.options.maxJobsPerUser ?? DEFAULT_SESSION_LIMITS.maxJobsPerUser,
        maxJobMemoryBytes: this.options.maxJobMemoryBytes ?? DEFAULT_SESSION_LIMITS.maxJobMemoryBytes,
        maxUserMemoryBytes: this.options.maxUserMemoryBytes ?? DEFAULT_SESSION_LIMITS.maxUserMemoryBytes,
        adapterChunkBytes: this.options.adapterChunkBytes,
        maxUserStorageBytes: this.options.maxUserStorageBytes ?? DEFAULT_SESSION_LIMITS.maxUserStorageBytes,
      },
      backend: this.backend,
      log: (line) => this.log(line),
    };
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(this.options.port ?? 8787, this.options.host ?? '127.0.0.1', () => resolve());
    });
    this.heartbeat = setInterval(() => this.beat(), HEARTBEAT_MS);
    this.heartbeat.unref();
    this.revocations = setInterval(() => this.enforceRevocations(), REVOCATION_CHECK_MS);
    this.revocations.unref();
    const { port } = this.http.address() as AddressInfo;
    const scheme = this.options.tlsCert ? 'wss' : 'ws';
    const host = this.options.host ?? '127.0.0.1';
    this.log(`listening on ${scheme}://${host}:${port} (engine ${this.backend}, ${engine.threads} threads)`);
    return { url: `${scheme}://${host}:${port}`, port };
  }

  private beat(): void {
    const idle = this.options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    for (const s of this.sessions) s.heartbeat(idle);
    void this.registry?.unloadIdle(idle);
    this.expireHeads();
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method === 'GET' && req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: !this.closing, backend: this.backend, engine: 'onnxruntime', provider: this.engine?.device, threads: this.engine?.threads, devices: this.sessions.size, jobs: this.registry?.size ?? 0 }));
      return;
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType });
      res.end(await this.metrics.registry.metrics());
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    void this.admit(req, socket, head).catch(() => socket.destroy());
  }

  /** Authenticates an upgrade (off the event loop, rate-limited), applies the connection limits, and starts a session. */
  private async admit(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const refuse = (status: number, text: string): void => {
      this.metrics.authFailures.inc();
      socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    const context = this.context;
    if (this.closing || !context) return refuse(503, 'Service Unavailable');
    const auth = req.headers.authorization;
    const token = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : undefined;
    const address = req.socket.remoteAddress ?? '?';
    // A token verified before costs nothing to check again: it never waits for the limiter (no lock-out by guessing).
    let user = this.users.verifiedBefore(token);
    if (!user) {
      const ticket = await this.authLimiter.begin(UserStore.claimedName(token), address);
      if (!ticket) {
        this.log('refused a connection: too many failed or concurrent sign-ins');
        return refuse(429, 'Too Many Requests');
      }
      try {
        user = await this.users.verify(token);
        if (user) ticket.succeeded();
      } finally {
        ticket.end();
      }
    }
    if (user === undefined) {
      this.log('refused a connection: missing, wrong or revoked token');
      return refuse(401, 'Unauthorized');
    }
    if (this.closing) return refuse(503, 'Service Unavailable');
    if (this.sessions.size >= (this.options.maxDevices ?? 64)) return refuse(503, 'Service Unavailable');
    const mine = [...this.sessions].filter((s) => s.user === user.name).length;
    if (mine >= (this.options.maxDevicesPerUser ?? 8)) {
      this.log(`refused a connection: user ${user.name} has ${mine} open`);
      return refuse(429, 'Too Many Requests');
    }
    this.wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      const session = new DeviceSession(context, ws, user.name, user.since);
      this.sessions.add(session);
      this.metrics.connections.set(this.sessions.size);
      ws.on('close', () => {
        this.sessions.delete(session);
        this.metrics.connections.set(this.sessions.size);
        session.closed();
      });
    });
  }

  /** Deletes the heads no job has used for headTtlMs (never one a loaded job uses). */
  private expireHeads(): void {
    if (!this.registry) return;
    const ttl = this.options.headTtlMs ?? HEAD_TTL_MS;
    const removed = this.heads.removeUnused(ttl, this.registry.headsInUse());
    if (removed > 0) this.log(`deleted ${removed} model heads no job used for ${(ttl / 86_400_000).toFixed(1)} days`);
  }

  /** Closes the sessions of users whose token was revoked or re-issued, and puts their jobs away. */
  private enforceRevocations(): void {
    for (const s of this.sessions) {
      if (this.users.activeSince(s.user) === s.tokenSince) continue;
      this.log(`closing a session of user ${s.user}: token revoked`);
      s.close(CloseCode.UNAUTHORIZED, 'token revoked');
      void this.registry?.unloadUser(s.user);
    }
  }

  /** Graceful stop: refuse new connections, checkpoint running jobs, close sockets. */
  async stop(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.revocations) clearInterval(this.revocations);
    for (const s of this.sessions) s.close(CloseCode.GOING_AWAY, 'server shutting down');
    const failed = (await this.registry?.unloadAll()) ?? 0;
    if (failed > 0) this.log(`checkpoint on shutdown failed for ${failed} job(s)`);
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeAllConnections?.();
    await this.engine?.dispose();
    this.log('stopped');
  }
}
