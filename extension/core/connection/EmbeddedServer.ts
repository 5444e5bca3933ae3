import { ChildProcess, fork } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { EmbeddedServerCommand, embeddedServerEvent, EmbeddedServerStart } from '../../../common/embeddedServerMessages';
import { defaultThreads } from '../model/Backbone';
import { MobiError } from '../MobiError';

/** Times the embedded server is started again after its process ended, within one run of a job (more is LOCAL_SERVER_STOPPED). */
const MAX_RESTARTS = 2;
/** How long the embedded server may take to start, milliseconds. */
const START_TIMEOUT_MS = 60_000;
/** How long a stop may take (it checkpoints every job) before the process is killed, milliseconds. */
const STOP_TIMEOUT_MS = 15_000;
/** Lines of the child's standard error kept for an error message. */
const STDERR_LINES = 20;

/** A side-tuning server for people without a team server: a child process on 127.0.0.1, started with this host's own runtime. */
export interface EmbeddedServer {
  url: string;
  token: string;
  /** Set when the process ended on its own (crashed, killed): its jobs resume on a new one from their last checkpoint. */
  readonly exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** The process id (tests stop it as a crash would). */
  readonly pid: number | undefined;
  /** Checkpoints its jobs and stops it (killed after STOP_TIMEOUT_MS). */
  stop(): Promise<void>;
}

/**
 * Where the child's entry is: beside the bundle in a packaged extension
 * (dist/embeddedServer.js), in the compiled tree otherwise.
 */
function entry(): string {
  return path.basename(__dirname) === 'dist' ? path.join(__dirname, 'embeddedServer.js') : path.resolve(__dirname, '..', '..', '..', 'server', 'cli', 'embedded.js');
}

/**
 * Starts the embedded server as a child process, as VS Code starts language
 * servers: `process.execPath` with ELECTRON_RUN_AS_NODE=1 (in VS Code the
 * extension host's Electron runs it as Node; elsewhere it is Node already).
 * Training then never runs on this process's event loop. LOCAL_SERVER_STOPPED
 * when it cannot start.
 */
export async function startEmbeddedServer(storeDir: string, log?: (line: string) => void): Promise<EmbeddedServer> {
  // The training engine takes the cores the device's backbone leaves free.
  const start: EmbeddedServerStart = { dataDir: path.join(storeDir, 'embedded-server'), threads: Math.max(1, os.availableParallelism() - defaultThreads()) };
  const child: ChildProcess = fork(entry(), [JSON.stringify(start)], {
    execPath: process.execPath,
    execArgv: [],
    env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    serialization: 'json',
  });
  const stderr: string[] = [];
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr.push(...chunk.split('\n').filter((l) => l.length > 0));
    stderr.splice(0, Math.max(0, stderr.length - STDERR_LINES));
  });
  let exited: EmbeddedServer['exited'];
  const ended = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      log?.(`the embedded server's process ended (${signal ?? `exit ${code}`})`);
      resolve();
    }),
  );
  const ready = await new Promise<{ url: string; token: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new MobiError('LOCAL_SERVER_STOPPED', `The local training server did not start within ${START_TIMEOUT_MS / 1000} s.`)), START_TIMEOUT_MS);
    child.on('message', (raw) => {
      const m = embeddedServerEvent(raw);
      if (m?.type === 'log') log?.(m.line);
      else if (m?.type === 'ready') {
        clearTimeout(timer);
        resolve(m);
      } else if (m?.type === 'failed') {
        clearTimeout(timer);
        reject(new MobiError('LOCAL_SERVER_STOPPED', `The local training server could not start: ${m.message} (${m.code}).`));
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new MobiError('LOCAL_SERVER_STOPPED', `The local training server could not be started (${err.message}).`, { cause: err }));
    });
    void ended.then(() => {
      clearTimeout(timer);
      reject(new MobiError('LOCAL_SERVER_STOPPED', `The local training server stopped while starting (${exited?.signal ?? `exit ${exited?.code}`})${stderr.length > 0 ? `: ${stderr.slice(-3).join(' | ')}` : ''}.`));
    });
  }).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  let stopping: Promise<void> | undefined;
  return {
    ...ready,
    get exited() {
      return exited;
    },
    pid: child.pid,
    stop: () =>
      (stopping ??= (async () => {
        if (exited) return;
        if (child.connected) child.send({ type: 'stop' } satisfies EmbeddedServerCommand);
        const killer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await ended;
        clearTimeout(killer);
      })()),
  };
}

/**
 * The embedded server one run of a job uses: started when first asked for,
 * and started again when its process ended (crashed, killed), the job then
 * resuming from its last checkpoint; after MAX_RESTARTS of those,
 * LOCAL_SERVER_STOPPED (the job stays resumable).
 */
export class EmbeddedServerKeeper {
  private server: EmbeddedServer | undefined;
  private restarts = 0;

  constructor(
    private readonly storeDir: string,
    private readonly log?: (line: string) => void,
  ) {}

  async get(): Promise<EmbeddedServer> {
    if (this.server?.exited) {
      if (++this.restarts > MAX_RESTARTS) {
        throw new MobiError('LOCAL_SERVER_STOPPED', `The local training server stopped ${this.restarts} times during this job. The job keeps its last checkpoint: resume it ("MobiLLM: Resume fine-tuning", or mobillm finetune --resume).`);
      }
      this.log?.('the local training server stopped; starting it again (the job resumes from its last checkpoint)');
      this.server = undefined;
    }
    return (this.server ??= await startEmbeddedServer(this.storeDir, this.log));
  }

  async stop(): Promise<void> {
    await this.server?.stop();
  }
}
