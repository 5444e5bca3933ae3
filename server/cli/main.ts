#!/usr/bin/env node
import * as os from 'node:os';
import * as path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { HEAD_TTL_MS, MobiServer } from '../MobiServer';
import { DEFAULT_SESSION_LIMITS } from '../SessionLimits';
import { packageVersion } from '../../common/packageRoot';
import { ServerError } from '../ServerError';
import { EXECUTION_DEVICES, ExecutionDevice } from '../training/onnx/OnnxEngine';
import { FileStore } from '../storage/file/FileStore';
import { migrateFolder } from '../storage/migrate';
import { DEFAULT_LEASE_MS, PgStore } from '../storage/pg/PgStore';
import type { ServerStore } from '../storage/Store';
import { WireError } from '../../common/WireError';

const DEFAULT_DATA = process.env.MOBILLM_DATA ?? path.join(os.homedir(), '.mobillm-server');
const DATABASE_HELP = 'PostgreSQL URL postgres://USER:PASSWORD@HOST:PORT/DB, shared by replicas (default $MOBILLM_DATABASE_URL; without one, the data folder)';

/** The store an admin command uses: the database when one is named, else the data folder. */
async function openStore(o: { data: string; database?: string }): Promise<ServerStore> {
  const url = o.database ?? process.env.MOBILLM_DATABASE_URL;
  return url ? PgStore.open(url) : new FileStore(o.data);
}

/** Runs an admin command on its store; typed errors are printed as `error[CODE]: message`. */
async function withStore(o: { data: string; database?: string }, work: (store: ServerStore) => Promise<void>): Promise<void> {
  let store: ServerStore | undefined;
  try {
    store = await openStore(o);
    await work(store);
  } catch (err) {
    if (err instanceof ServerError || err instanceof WireError) fail(err.code, err.message);
    throw err;
  } finally {
    await store?.close();
  }
}

function seconds(value: string): number {
  const n = Number(value);
  if (!(n >= 1 && n <= 600)) throw new InvalidArgumentError('expected a number of seconds from 1 to 600');
  return Math.round(n * 1000);
}

function wsUrl(value: string): string {
  if (!/^wss?:\/\/[^\s/]+(\/\S*)?$/.test(value)) throw new InvalidArgumentError('expected ws://HOST:PORT or wss://HOST:PORT');
  return value;
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected a port number');
  return n;
}

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new InvalidArgumentError('expected a whole number from 1 to 1024');
  return n;
}

/** A memory size given in GiB, as bytes. */
function gibibytes(value: string): number {
  const n = Number(value);
  if (!(n > 0 && n <= 4096)) throw new InvalidArgumentError('expected a size in GiB, above 0 and at most 4096');
  return Math.round(n * 2 ** 30);
}

/** A number of days, as milliseconds. */
function days(value: string): number {
  const n = Number(value);
  if (!(n > 0 && n <= 3650)) throw new InvalidArgumentError('expected a number of days, above 0 and at most 3650');
  return Math.round(n * 86_400_000);
}

function device(value: string): ExecutionDevice {
  if (!(EXECUTION_DEVICES as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected ${EXECUTION_DEVICES.join(' or ')}`);
  return value as ExecutionDevice;
}

/** The --data flag that names `dir`, or nothing when it is the default (for printed commands). */
function dataFlag(dir: string): string {
  return path.resolve(dir) === path.resolve(DEFAULT_DATA) ? '' : ` --data ${dir}`;
}

function fail(code: string, message: string): never {
  process.stderr.write(`error[${code}]: ${message}\n`);
  process.exit(1);
}

export function buildServerProgram(): Command {
  const program = new Command('mobillm-server').description('MobiLLM team side-tuning server. Every command uses one data folder: --data, else $MOBILLM_DATA, else ~/.mobillm-server');
  program.version(packageVersion(), '-V, --version', 'print the version');
  program
    .command('start')
    .description('Run the server (SIGTERM checkpoints running jobs and exits)')
    .option('--host <addr>', 'bind address', '127.0.0.1')
    .option('--port <n>', 'port (0 = any free port)', port, 8787)
    .option('--data <dir>', 'data folder (users, heads, checkpoints, adapters)', DEFAULT_DATA)
    .option('--database <url>', DATABASE_HELP)
    .option('--advertise <url>', 'the address devices reach this replica at (ws://HOST:PORT), told to devices whose job this replica trains', wsUrl)
    .option('--replica-id <id>', 'this replica\'s name in the database (default: a new one per process)')
    .option('--lease-seconds <s>', `a job lease's length: a killed replica's jobs move to another after it (default ${DEFAULT_LEASE_MS / 1000})`, seconds)
    .option('--tls-cert <file>', 'TLS certificate (PEM)')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--max-jobs-per-user <n>', 'jobs one user may have loaded at once', port, DEFAULT_SESSION_LIMITS.maxJobsPerUser)
    .option('--max-job-memory <GiB>', `server memory one job may take, estimated from its settings (default ${DEFAULT_SESSION_LIMITS.maxJobMemoryBytes / 2 ** 30})`, gibibytes)
    .option('--max-user-storage <GiB>', `server disk one user's jobs and uploaded heads may take (default ${DEFAULT_SESSION_LIMITS.maxUserStorageBytes / 2 ** 30})`, gibibytes)
    .option('--head-ttl-days <days>', `delete a stored model head no job used for this long (default ${HEAD_TTL_MS / 86_400_000})`, days)
    .option('--max-user-memory <GiB>', `server memory all loaded jobs of one user may take (default ${DEFAULT_SESSION_LIMITS.maxUserMemoryBytes / 2 ** 30})`, gibibytes)
    .option('--max-devices <n>', 'open device connections', port, 64)
    .option('--device <device>', 'training engine provider: cpu or cuda (the GPU image)', device, 'cpu' as ExecutionDevice)
    .option('--threads <n>', 'CPU threads of each training worker (default: the cores, at most 4)', positive)
    .option('--training-workers <n>', 'worker threads that train, each one step at a time; jobs share them round-robin per user (default: the cores divided by --threads)', positive)
    .action(async (o: { host: string; port: number; data: string; database?: string; advertise?: string; replicaId?: string; leaseSeconds?: number; tlsCert?: string; tlsKey?: string; maxJobsPerUser: number; maxJobMemory?: number; maxUserMemory?: number; maxUserStorage?: number; headTtlDays?: number; maxDevices: number; device: ExecutionDevice; threads?: number; trainingWorkers?: number }) => {
      const database = o.database ?? process.env.MOBILLM_DATABASE_URL;
      const server = new MobiServer({
        dataDir: o.data, database, advertise: o.advertise, replicaId: o.replicaId, leaseMs: o.leaseSeconds, host: o.host, port: o.port, tlsCert: o.tlsCert, tlsKey: o.tlsKey,
        maxJobsPerUser: o.maxJobsPerUser, maxJobMemoryBytes: o.maxJobMemory, maxUserMemoryBytes: o.maxUserMemory, maxUserStorageBytes: o.maxUserStorage, headTtlMs: o.headTtlDays, maxDevices: o.maxDevices, device: o.device, threads: o.threads, trainingWorkers: o.trainingWorkers,
        log: (line) => process.stdout.write(`${line}\n`),
      });
      let started;
      try {
        started = await server.start();
      } catch (err) {
        if (err instanceof ServerError) fail(err.code, err.message);
        fail('START_FAILED', `could not start: ${(err as Error).message}`);
      }
      process.stdout.write(database ? `store ${server.store.where}\n` : `data folder ${path.resolve(o.data)}\n`);
      if ((await server.users.list()).every((u) => u.revoked)) {
        process.stdout.write(`no users yet: create one with "mobillm-server users add NAME${database ? ' --database URL' : dataFlag(o.data)}"\n`);
      }
      process.stdout.write(`${JSON.stringify({ ready: true, url: started.url, port: started.port, backend: server.backend })}\n`);
      const stop = (signal: string): void => {
        process.stdout.write(`${signal}: checkpointing and stopping\n`);
        void server.stop().then(() => process.exit(0));
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });

  const users = program.command('users').description('Team members and their tokens');
  users
    .command('add')
    .argument('<name>')
    .option('--data <dir>', 'data folder', DEFAULT_DATA)
    .option('--database <url>', DATABASE_HELP)
    .description('Create a user and print its token once (it is stored hashed)')
    .action((name: string, o: { data: string; database?: string }) =>
      withStore(o, async (store) => {
        const token = await store.users.add(name);
        const where = store.kind === 'file' ? path.resolve(o.data) : 'the database';
        process.stderr.write(`token for ${name} (shown once: only its hash is kept in ${where}; give it to ${name} now):\n`);
        process.stdout.write(`${token}\n`);
      }),
    );
  users
    .command('list')
    .option('--data <dir>', 'data folder', DEFAULT_DATA)
    .option('--database <url>', DATABASE_HELP)
    .action((o: { data: string; database?: string }) =>
      withStore(o, async (store) => {
        for (const u of await store.users.list()) process.stdout.write(`${u.name}\t${u.createdAt}\t${u.revoked ? 'revoked' : 'active'}\n`);
      }),
    );
  users
    .command('revoke')
    .argument('<name>')
    .option('--data <dir>', 'data folder', DEFAULT_DATA)
    .option('--database <url>', DATABASE_HELP)
    .description('Revoke a user\'s token (every replica closes their sessions within a second)')
    .action((name: string, o: { data: string; database?: string }) =>
      withStore(o, async (store) => {
        await store.users.revoke(name);
        process.stdout.write(`revoked ${name}\n`);
      }),
    );
  program
    .command('migrate')
    .description('Copy a data folder (users, jobs with their checkpoints and adapters, heads) into PostgreSQL; run again, it copies only what is new')
    .requiredOption('--from <dir>', 'the data folder to copy (only read)')
    .option('--database <url>', DATABASE_HELP)
    .action((o: { from: string; database?: string }) => {
      if (!(o.database ?? process.env.MOBILLM_DATABASE_URL)) fail('BAD_CONFIG', 'migrate needs --database URL (or $MOBILLM_DATABASE_URL)');
      return withStore({ data: o.from, database: o.database }, async (store) => {
        const r = await migrateFolder(o.from, store as PgStore, (line) => process.stderr.write(`${line}\n`));
        process.stdout.write(`${JSON.stringify({ migrated: r, store: store.where })}\n`);
      });
    });
  return program;
}

if (require.main === module) {
  void buildServerProgram().parseAsync(process.argv);
}
