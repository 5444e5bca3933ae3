import type { WebSocket } from 'ws';
import { PROTOCOL_VERSION } from '../../common/limits';
import type { ModelSpec } from '../../common/messages';
import { DeviceSession } from '../../server/DeviceSession';
import { JobRegistry } from '../../server/JobRegistry';
import { ServerMetrics } from '../../server/ServerMetrics';
import type { SessionContext } from '../../server/SessionContext';
import { DEFAULT_SESSION_LIMITS, SessionLimits } from '../../server/SessionLimits';
import { HeadStore } from '../../server/storage/file/HeadStore';
import { JobStore } from '../../server/storage/file/JobStore';
import { OnnxEngine } from '../../server/training/onnx/OnnxEngine';
import { model, SocketEnd, storesWithHead } from './sessionHarness';
import { tmpDir } from './workspaces';
import { LocalTrainers } from '../../server/training/LocalTrainers';

/** A server context with the file store in a new folder (with the test model's head stored, unless `withHead` is false) and `limits` over the defaults. */
export async function serverContext(engine: OnnxEngine, limits: Partial<SessionLimits> = {}, withHead = true): Promise<SessionContext> {
  const dir = tmpDir('server-context');
  const { heads, jobs } = withHead ? await storesWithHead() : { heads: new HeadStore(dir), jobs: new JobStore(dir) };
  return { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics: new ServerMetrics(), limits: { ...DEFAULT_SESSION_LIMITS, ...limits }, backend: 'test', log: () => undefined };
}

/** Frames a device of `user` sends to a server context shared with other sessions, after its hello was welcomed. */
export async function connect(ctx: SessionContext, user = 'ann', spec: ModelSpec = model): Promise<SocketEnd> {
  const ws = new SocketEnd();
  new DeviceSession(ctx, ws as unknown as WebSocket, user);
  ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model: spec });
  await ws.next('session/welcome');
  return ws;
}

/**
 * For a describe block: one ONNX engine for its tests (created before them,
 * disposed after; `engine()` once they run) and `context`, which makes a
 * fresh server context on it.
 */
export function useServerContexts(): { context: (limits?: Partial<SessionLimits>, withHead?: boolean) => Promise<SessionContext>; engine: () => OnnxEngine } {
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());
  return { context: (limits = {}, withHead = true) => serverContext(engine, limits, withHead), engine: () => engine };
}
