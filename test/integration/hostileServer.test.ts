import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WebSocketServer } from 'ws';
import { decodeDeviceFrame, decodeServerFrame, encodeFrame } from '../../common/codec';
import { PROTOCOL_VERSION } from '../../common/limits';
import { WireError } from '../../common/WireError';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { JobRecordStore } from '../../extension/core/job/JobRecordStore';
import { MobiError } from '../../extension/core/MobiError';
import { tinyModel } from '../helpers/models';
import { listFiles, makeWorkspace, tmpDir } from '../helpers/workspaces';

/**
 * A server (or anyone on the path of a ws:// connection) that answers
 * job/create with a job id of its choosing: here a path out of the device's store.
 */
async function hostileServer(jobId: string): Promise<{ url: string; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      const { message } = decodeDeviceFrame(data as Buffer);
      // It speaks the protocol (replies echo the request's id) and lies in what it says.
      if (message.type === 'session/hello') ws.send(encodeFrame({ type: 'session/welcome', protocol: PROTOCOL_VERSION, server: 'x', backend: 'x', headCached: true, credits: 2, requestId: message.requestId }));
      if (message.type === 'job/create') ws.send(encodeFrame({ type: 'job/ready', jobId, nextIndex: 0, step: 0, state: 'training', requestId: message.requestId }));
    });
  });
  const { port } = wss.address() as { port: number };
  return { url: `ws://127.0.0.1:${port}`, close: () => new Promise((r) => wss.close(() => r())) };
}

describe('a hostile server cannot choose where the device writes', function () {
  this.timeout(60_000);

  it('a job id that is not a UUID is refused where it arrives (the frame) and where it would reach a file name (the store)', () => {
    const evil = '../../../../tmp/x/evil';
    assert.throws(() => decodeServerFrame(encodeFrame({ type: 'job/ready', jobId: evil, nextIndex: 0, step: 0, state: 'training' })), (e: unknown) => e instanceof WireError && e.code === 'BAD_FRAME');
    const store = tmpDir('records');
    const records = new JobRecordStore(store);
    assert.throws(() => records.save({ jobId: evil, workspace: '/w', fingerprint: 'f' }), (e: unknown) => MobiError.is(e, 'NO_SUCH_JOB'));
    assert.throws(() => records.save({ jobId: 'last', workspace: '/w', fingerprint: 'f' }), (e: unknown) => MobiError.is(e, 'NO_SUCH_JOB'));
    assert.deepEqual(listFiles(store), []);
  });

  it('a fine-tune against a server answering job/create with a path writes nothing outside its store', async () => {
    const outside = tmpDir('outside');
    const store = tmpDir('store');
    const depth = path.resolve(store, 'jobs').split(path.sep).length - 1;
    const evil = `${'../'.repeat(depth)}${outside.slice(1)}/evil`;
    const server = await hostileServer(evil);
    try {
      const job = new FineTuneJob({ workspace: makeWorkspace(5, 3, 30), model: tinyModel({ layers: 2, embd: 32, heads: 2 }), storeDir: store, threads: 1, steps: 2, seqLen: 16, server: { url: server.url, token: 't' }, reconnectTimeoutMs: 1000 });
      const err = await job.run().then(() => undefined, (e: unknown) => e);
      assert.ok(MobiError.is(err), `a typed error: ${String(err)}`);
      assert.equal(err.code, 'SERVER_ERROR');
      assert.match(err.message, /job id/);
    } finally {
      await server.close();
    }
    assert.deepEqual(fs.readdirSync(outside), [], 'nothing written where the server pointed');
    assert.ok(!listFiles(store).some((f) => f.endsWith('evil.json')));
  });
});
