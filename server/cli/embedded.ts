/**
 * The embedded server's process: a side-tuning server on 127.0.0.1 for
 * people without a team server, started by the device (the extension host or
 * the CLI) as a child with the host's own runtime, so that training never
 * runs on the host's event loop. It trains with one worker thread, issues a
 * token for the local user, says where it listens over IPC, and stops
 * (checkpointing its jobs) when told to or when the device goes away.
 *
 *   node out/server/cli/embedded.js '{"dataDir": "...", "threads": 1}'   (with an IPC channel)
 */
import type { EmbeddedServerCommand, EmbeddedServerEvent, EmbeddedServerStart } from '../../common/embeddedServerMessages';
import { MobiServer } from '../MobiServer';

/** The local user of the embedded server; its token is made anew at each start and handed only to the device that started it, over IPC. */
const LOCAL_USER = 'local';

function tell(event: EmbeddedServerEvent): void {
  process.send?.(event);
}

async function main(): Promise<void> {
  if (!process.send) throw new Error('the embedded server runs as a child with an IPC channel');
  const start = JSON.parse(process.argv[2] ?? '{}') as EmbeddedServerStart;
  const server = new MobiServer({ dataDir: start.dataDir, host: '127.0.0.1', port: 0, threads: start.threads, trainingWorkers: 1, log: (line) => tell({ type: 'log', line }) });
  if ((await server.users.list()).some((u) => u.name === LOCAL_USER && !u.revoked)) await server.users.revoke(LOCAL_USER);
  const token = await server.users.add(LOCAL_USER);
  const { url } = await server.start();
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= server.stop().finally(() => {
      process.disconnect?.();
      process.exit(0);
    }));
  process.on('message', (m: EmbeddedServerCommand) => {
    if (m?.type === 'stop') void stop();
  });
  // The device went away (closed, killed): checkpoint and go too.
  process.on('disconnect', () => void stop());
  process.on('SIGTERM', () => void stop());
  tell({ type: 'ready', url, token });
}

void main().catch((err: unknown) => {
  const e = err as { code?: unknown; message?: unknown };
  tell({ type: 'failed', code: typeof e?.code === 'string' ? e.code : 'SERVER_ERROR', message: typeof e?.message === 'string' ? e.message.split('\n')[0]! : 'the embedded server could not start' });
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100).unref();
});
