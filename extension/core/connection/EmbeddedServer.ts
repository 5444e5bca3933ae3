import * as os from 'node:os';
import * as path from 'node:path';
import { defaultThreads } from '../model/Backbone';
import { MobiServer } from '../../../server/MobiServer';

/** A side-tuning server in this process on 127.0.0.1, for people without a team server. */
export interface EmbeddedServer {
  url: string;
  token: string;
  server: MobiServer;
  stop(): Promise<void>;
}

/** Local user of the embedded server; its token is re-issued at each start and never leaves the process. */
const LOCAL_USER = 'local';

export async function startEmbeddedServer(storeDir: string, log?: (line: string) => void): Promise<EmbeddedServer> {
  // The training engine takes the cores the device's backbone leaves free.
  const threads = Math.max(1, os.availableParallelism() - defaultThreads());
  const server = new MobiServer({ dataDir: path.join(storeDir, 'embedded-server'), host: '127.0.0.1', port: 0, threads, trainingWorkers: 1, log });
  if ((await server.users.list()).some((u) => u.name === LOCAL_USER && !u.revoked)) await server.users.revoke(LOCAL_USER);
  const token = await server.users.add(LOCAL_USER);
  const { url } = await server.start();
  return { url, token, server, stop: () => server.stop() };
}
