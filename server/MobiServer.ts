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
import { randomUUID } from 'node:crypto';
import { FileStore } from './storage/file/FileStore';
import { DEFAULT_LEASE_MS, PgStore } from './storage/pg/PgStore';
import type { ServerStore } from './storage/Store';
import { TokenUsers } from './storage/TokenUsers';
import type { ExecutionDevice } from './training/onnx/OnnxEngine';
import { TrainerPool } from './training/pool/TrainerPool';
import { LoopDelayProbe } from './LoopDelayProbe';

/** How long a stored model head no job uses is kept. */
export const HEAD_TTL_MS = 30 * 86_400_000;

/** Options of the side-tuning server. */
export interface MobiServerOptions {
  /** Data folder of the file store: users, heads, jobs (checkpoints and adapters). Unused with a database. */
  dataDir: string;
  /** A PostgreSQL URL: the store replicas share, opened by start() (instead of the data folder). */
  database?: string;
  /** An opened store to use (tests, the migration command); the caller closes it. */
  store?: ServerStore;
  /** The address devices reach this replica at (ws://host:port), told to devices that ask another replica for a job this one trains. */
  advertise?: string;
  /** This replica's id in the database. Default: a new random one per process. */
  replicaId?: string;
  /** A job lease's length (PostgreSQL store): a killed replica's jobs move after it. Default DEFAULT_LEASE_MS. */
  leaseMs?: number;
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
  /** CPU threads of each training worker's engine. Default defaultTrainingThreads() (the cores, at most 4). */
  threads?: number;
  /** Worker threads that train (each one step at a time; jobs share them round-robin per user). Default defaultTrainingWorkers(threads). */
  trainingWorkers?: number;
  /** Write one line per event (no data, no text) here. Default: nothing. */
  log?: (line: string) => void;
}

/**
 * The team's side-tuning server: WebSocket (binary frames) for devices,
 * `GET /healthz`, `GET /metrics`. Authentication happens on the HTTP upgrade,
 * before any message is read.
 */
export class MobiServer {
  private storeInUse: ServerStore | undefined;
  readonly metrics = new ServerMetrics();
  /** The training workers and the jobs they hold; made by start(). */
  private trainers: TrainerPool | undefined;
  private registry: JobRegistry | undefined;
  backend = 'unknown';
  private readonly http: http.Server | https.Server;
  private readonly wss: WebSocketServer;
  private readonly sessions = new Set<DeviceSession>();
  /** What sessions may use; made by start(), once the backend is known. */
  private context: SessionContext | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private revocations: NodeJS.Timeout | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private readonly loopProbe = new LoopDelayProbe(this.metrics);
  /** Made again by start() with the store's shared counts (replicas count failed sign-ins together). */
  private authLimiter = new AuthLimiter();
  private closing = false;

  constructor(readonly options: MobiServerOptions) {
    if (options.store) this.storeInUse = options.store;
    else if (!options.database) {
      fs.mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
      this.storeInUse = new FileStore(options.dataDir);
    }
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => void this.onRequest(req, res);
    if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) throw new ServerError('BAD_CONFIG', 'TLS needs both --tls-cert and --tls-key');
    this.http = options.tlsCert
      ? https.createServer({ cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey!) }, handler)
      : http.createServer(handler);
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES, perMessageDeflate: false });
    this.http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
  }

  /** The store (the file store unless a database was given; a database's is open after start()). */
  get store(): ServerStore {
    if (!this.storeInUse) throw new ServerError('BAD_CONFIG', 'the database is opened by start()');
    return this.storeInUse;
  }

  get users(): ServerStore['users'] {
    return this.store.users;
  }

  get jobs(): ServerStore['jobs'] {
    return this.store.jobs;
  }

  get heads(): ServerStore['heads'] {
    return this.store.heads;
  }

  log(line: string): void {
    this.options.log?.(`${new Date().toISOString()} ${line}`);
  }

  async start(): Promise<{ url: string; port: number }> {
    this.storeInUse ??= await PgStore.open(this.options.database!, { replicaId: this.options.replicaId, leaseMs: this.options.leaseMs });
    const store = this.storeInUse;
    if (store.kind === 'file') {
      const stale = removeStaleTemporaries(this.options.dataDir);
      if (stale > 0) this.log(`removed ${stale} unfinished temporary files left by an earlier process`);
    }
    await store.replicas.beat(this.options.advertise);
    this.authLimiter = new AuthLimiter(Date.now, undefined, store.authFailures);
    const trainers = await TrainerPool.create({ device: this.options.device, threads: this.options.threads, workers: this.options.trainingWorkers });
    this.trainers = trainers;
    trainers.onWorkerLost = (i) => this.log(`training worker ${i} stopped; started a new one (its jobs resume from their checkpoints)`);
    this.backend = trainers.name;
    this.metrics.engine.set({ engine: 'onnxruntime', provider: trainers.device }, 1);
    const registry = new JobRegistry(trainers, store.jobs, store.heads, (n) => this.metrics.jobsActive.set(n), store.leases);
    this.registry = registry;
    store.leases.onLost((key) => {
      this.log('a job\'s lease was taken over by another replica; stopped training it here');
      this.metrics.leaseLosses.inc();
      void registry.forget(key);
    });
    store.replicas.onUsersChanged(() => this.enforceRevocations());
    this.metrics.replica.set({ replica: store.replicas.id, store: store.kind }, 1);
    void this.expireHeads();
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
    this.loopProbe.start();
    this.heartbeat = setInterval(() => this.beat(), HEARTBEAT_MS);
    this.heartbeat.unref();
    this.revocations = setInterval(() => this.enforceRevocations(), REVOCATION_CHECK_MS);
    this.revocations.unref();
    this.leaseTimer = setInterval(() => void this.renewLeases(), (this.options.leaseMs ?? DEFAULT_LEASE_MS) / 3);
    this.leaseTimer.unref();
    const { port } = this.http.address() as AddressInfo;
    const scheme = this.options.tlsCert ? 'wss' : 'ws';
    const host = this.options.host ?? '127.0.0.1';
    this.log(`listening on ${scheme}://${host}:${port} (engine ${this.backend}, ${trainers.workers} training workers of ${trainers.threads} threads, ${store.kind} store ${store.where}, replica ${store.replicas.id})`);
    return { url: `${scheme}://${host}:${port}`, port };
  }

  private beat(): void {
    const idle = this.options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    for (const s of this.sessions) s.heartbeat(idle);
    void this.registry?.unloadIdle(idle);
    void this.expireHeads();
  }

  /** Says this replica is alive (with its address) and renews its jobs' leases; a lease another replica took stops that job here. */
  private async renewLeases(): Promise<void> {
    const store = this.storeInUse;
    if (!store || this.closing) return;
    try {
      await store.replicas.beat(this.options.advertise);
      await store.leases.renew();
      this.metrics.storeReachable.set(1);
    } catch {
      this.metrics.storeReachable.set(0); // the database is away: fencing keeps every write safe until it returns
    }
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method === 'GET' && req.url === '/healthz') {
      const store = this.storeInUse;
      const reachable = (await store?.reachable()) ?? false;
      this.metrics.storeReachable.set(reachable ? 1 : 0);
      const ok = !this.closing && reachable;
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        ok, backend: this.backend, engine: 'onnxruntime', provider: this.trainers?.device, threads: this.trainers?.threads, trainingWorkers: this.trainers?.workers, jobsPerWorker: this.trainers?.jobsPerWorker(), devices: this.sessions.size, jobs: this.registry?.size ?? 0,
        replica: store?.replicas.id, advertise: this.options.advertise, store: { kind: store?.kind, where: store?.where, reachable },
      }));
      return;
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      this.metrics.storeBusy.set(this.storeInUse?.busySeconds() ?? 0);
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
      const ticket = await this.authLimiter.begin(TokenUsers.claimedName(token), address);
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
    // Counted over every replica sharing the store.
    const sessionId = randomUUID();
    const max = this.options.maxDevicesPerUser ?? 8;
    let opened: boolean;
    try {
      opened = await this.store.replicas.openDevice(sessionId, user.name, max);
    } catch {
      this.log('refused a connection: the store is unreachable');
      return refuse(503, 'Service Unavailable'); // the device waits and tries again
    }
    if (!opened) {
      this.log(`refused a connection: user ${user.name} has ${max} open`);
      return refuse(429, 'Too Many Requests');
    }
    if (this.closing) {
      void this.store.replicas.closeDevice(sessionId);
      return refuse(503, 'Service Unavailable');
    }
    this.wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      const session = new DeviceSession(context, ws, user.name, user.since);
      this.sessions.add(session);
      this.metrics.connections.set(this.sessions.size);
      ws.on('close', () => {
        this.sessions.delete(session);
        void this.store.replicas.closeDevice(sessionId);
        this.metrics.connections.set(this.sessions.size);
        session.closed();
      });
    });
  }

  /** Deletes the heads no job has used for headTtlMs (never one a loaded job uses). */
  private async expireHeads(): Promise<void> {
    if (!this.registry) return;
    const ttl = this.options.headTtlMs ?? HEAD_TTL_MS;
    const removed = await this.heads.removeUnused(ttl, this.registry.headsInUse()).catch(() => 0);
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
    this.loopProbe.dispose();
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.revocations) clearInterval(this.revocations);
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    for (const s of this.sessions) s.close(CloseCode.GOING_AWAY, 'server shutting down');
    const failed = (await this.registry?.unloadAll()) ?? 0;
    if (failed > 0) this.log(`checkpoint on shutdown failed for ${failed} job(s)`);
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeAllConnections?.();
    await this.trainers?.dispose();
    if (this.storeInUse && this.storeInUse !== this.options.store) await this.storeInUse.close();
    this.log('stopped');
  }
}
