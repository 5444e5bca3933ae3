/**
 * The IPC between the device and its embedded server's process (a child
 * started with the host's own runtime, as VS Code starts language servers):
 * one typed map per direction. Nothing of the workspace crosses it: the
 * token is the local user's, made anew at each start; log lines hold no data.
 */

/** What the child tells the device. */
export type EmbeddedServerEvent =
  /** Listening on 127.0.0.1: the device connects with this URL and token. */
  | { type: 'ready'; url: string; token: string }
  /** One line of the server's log (no data, no text). */
  | { type: 'log'; line: string }
  /** It could not start: the error's code and message. */
  | { type: 'failed'; code: string; message: string };

/** What the device tells the child. */
export type EmbeddedServerCommand =
  /** Checkpoint every job, stop and exit. */
  { type: 'stop' };

/** How the child is started: argv[2] holds these as JSON. */
export interface EmbeddedServerStart {
  /** The server's data folder. */
  dataDir: string;
  /** Intra-op threads of its one training worker. */
  threads: number;
}

/** An event from the child, checked (undefined for anything else). */
export function embeddedServerEvent(value: unknown): EmbeddedServerEvent | undefined {
  const v = value as Record<string, unknown> | null;
  if (typeof v !== 'object' || v === null) return undefined;
  if (v.type === 'ready' && typeof v.url === 'string' && typeof v.token === 'string') return { type: 'ready', url: v.url, token: v.token };
  if (v.type === 'log' && typeof v.line === 'string') return { type: 'log', line: v.line.slice(0, 1000) };
  if (v.type === 'failed' && typeof v.code === 'string' && typeof v.message === 'string') return { type: 'failed', code: v.code.slice(0, 64), message: v.message.slice(0, 1000) };
  return undefined;
}
