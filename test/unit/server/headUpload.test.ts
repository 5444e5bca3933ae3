import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION } from '../../../common/limits';
import type { ModelSpec } from '../../../common/messages';
import { DeviceSession } from '../../../server/DeviceSession';
import { headDigestOf } from '../../../server/HeadUpload';
import { DEFAULT_SESSION_LIMITS } from '../../../server/SessionLimits';
import { JobRegistry } from '../../../server/JobRegistry';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { HeadStore } from '../../../server/storage/file/HeadStore';
import { JobStore } from '../../../server/storage/file/JobStore';
import { OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { config, D, headHalves, headNorm, model, SocketEnd, V } from '../../helpers/sessionHarness';
import { tmpDir } from '../../helpers/workspaces';
import { LocalTrainers } from '../../../server/training/LocalTrainers';

describe('server: model heads cannot be replaced or forged', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  function server() {
    const dir = tmpDir('heads');
    const heads = new HeadStore(dir);
    const jobs = new JobStore(dir);
    const ctx = { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics: new ServerMetrics(), limits: DEFAULT_SESSION_LIMITS, backend: 'test', log: () => undefined };
    return { dir, heads, connect: async (user: string, spec: ModelSpec) => {
      const ws = new SocketEnd();
      new DeviceSession(ctx, ws as unknown as WebSocket, user);
      ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model: spec });
      return { ws, welcome: await ws.next('session/welcome') };
    } };
  }

  /** Sends a head: `rows` lists the row index of each one-row chunk. */
  function sendHead(ws: SocketEnd, halves: Uint16Array, rows: number[]): void {
    ws.deliver({ type: 'head/begin', rows: V, cols: D }, Buffer.from(headNorm.buffer));
    for (const r of rows) ws.deliver({ type: 'head/chunk', rowStart: r, rowCount: 1 }, Buffer.from(halves.buffer, r * D * 2, D * 2));
    ws.deliver({ type: 'head/end' });
  }
  const allRows = Array.from({ length: V }, (_, i) => i);

  it('accepts the head that matches the session\'s digest, once, and never replaces it', async () => {
    const s = server();
    const honest = await s.connect('ann', model);
    assert.equal(honest.welcome.headCached, false);
    sendHead(honest.ws, headHalves, allRows);
    await honest.ws.next('head/stored');
    assert.equal((await s.connect('bob', model)).welcome.headCached, true);
    const stored = fs.readFileSync(`${s.dir}/heads/${model.fingerprint}.${model.headDigest}.head`);
    const again = await s.connect('bob', model);
    sendHead(again.ws, headHalves, allRows);
    await again.ws.next('head/stored');
    assert.deepEqual(fs.readFileSync(`${s.dir}/heads/${model.fingerprint}.${model.headDigest}.head`), stored);
  });

  it('answers a head too large for the server with LIMIT', async () => {
    const s = server();
    const huge = { ...model, vocabularySize: 2_000_000, hiddenSize: 600 };
    const { ws } = await s.connect('ann', huge);
    ws.deliver({ type: 'head/begin', rows: 2_000_000, cols: 600 }, Buffer.alloc(2400));
    assert.equal((await ws.next('error')).code, 'LIMIT');
  });

  it('refuses one row sent many times as a complete head', async () => {
    const s = server();
    const { ws } = await s.connect('mallory', model);
    sendHead(ws, headHalves, Array.from({ length: V }, () => 0));
    assert.equal((await ws.next('error')).code, 'BAD_FRAME');
    assert.equal(await s.heads.has(model), false);
  });

  it('refuses a head that does not match the digest the session stated, and trains on no one else\'s head', async () => {
    const s = server();
    const forged = Uint16Array.from(headHalves, (h, i) => (i % 7 === 0 ? h ^ 0x8000 : h));
    // Stating the honest digest with forged rows: refused, nothing stored.
    const a = await s.connect('mallory', model);
    sendHead(a.ws, forged, allRows);
    assert.equal((await a.ws.next('error')).code, 'BAD_FRAME');
    assert.equal(await s.heads.has(model), false);
    a.ws.deliver({ type: 'job/create', name: 'x', config });
    assert.equal((await a.ws.next('error')).code, 'HEAD_MISSING');
    // Stating the forged head's own digest: stored apart, and an honest session does not see it.
    const forgedSpec = { ...model, headDigest: headDigestOf(headNorm, forged) };
    const b = await s.connect('mallory', forgedSpec);
    sendHead(b.ws, forged, allRows);
    await b.ws.next('head/stored');
    const honest = await s.connect('ann', model);
    assert.equal(honest.welcome.headCached, false, 'the honest model head is still missing: it uploads its own');
  });
});
