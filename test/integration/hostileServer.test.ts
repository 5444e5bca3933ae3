import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WebSocket, WebSocketServer } from 'ws';
import { decodeDeviceFrame, decodeServerFrame, encodeFrame } from '../../common/codec';
import { PROTOCOL_VERSION } from '../../common/limits';
import { WireError } from '../../common/WireError';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { JobRecordStore } from '../../extension/core/job/JobRecordStore';
import { MobiError } from '../../extension/core/MobiError';
import { MobiServer } from '../../server/MobiServer';
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

/**
 * A server in the middle of a ws:// connection to a real one: every frame
 * passes, except that adapter/get is answered with `declared` bytes of
 * adapter and parts of `partBytes` zeros.
 */
async function inflatingProxy(upstream: string, declared: number, partBytes: number): Promise<{ url: string; gets: () => number; close: () => Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  let gets = 0;
  wss.on('connection', (down, req) => {
    const up = new WebSocket(upstream, { headers: { authorization: req.headers.authorization ?? '' } });
    const early: Buffer[] = [];
    up.on('open', () => early.splice(0).forEach((f) => up.send(f)));
    up.on('message', (data) => down.readyState === WebSocket.OPEN && down.send(data as Buffer));
    up.on('close', () => down.close());
    up.on('error', () => down.close());
    down.on('close', () => up.close());
    down.on('message', (data) => {
      const { message } = decodeDeviceFrame(data as Buffer);
      if (message.type === 'adapter/get') {
        gets++;
        const offset = message.offset ?? 0;
        down.send(encodeFrame({ type: 'adapter/data', jobId: message.jobId, bytes: declared, sha256: 'ab'.repeat(32), offset, requestId: message.requestId }, Buffer.alloc(Math.min(partBytes, declared - offset))));
      } else if (up.readyState === WebSocket.OPEN) up.send(data as Buffer);
      else early.push(data as Buffer);
    });
  });
  const { port } = wss.address() as { port: number };
  return { url: `ws://127.0.0.1:${port}`, gets: () => gets, close: () => new Promise((r) => wss.close(() => r())) };
}

/** Bytes of the files under `dir`. */
function bytesUnder(dir: string): number {
  return listFiles(dir).reduce((sum, f) => sum + fs.statSync(f).size, 0);
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

  it('a server that declares an 8 GiB adapter for a tiny job is refused before a byte of it is written', async () => {
    const server = new MobiServer({ dataDir: tmpDir('inflated-server'), port: 0, threads: 1 });
    const { url } = await server.start();
    const proxy = await inflatingProxy(url, 8 * 2 ** 30, 4 * 2 ** 20);
    const store = tmpDir('inflated-store');
    try {
      const token = await server.users.add('ida');
      const job = new FineTuneJob({ workspace: makeWorkspace(5, 3, 30), model: tinyModel({ layers: 2, embd: 32, heads: 2 }), storeDir: store, threads: 1, steps: 2, seqLen: 16, server: { url: proxy.url, token }, reconnectTimeoutMs: 1000 });
      const err = await job.run().then(() => undefined, (e: unknown) => e);
      assert.ok(MobiError.is(err, 'ADAPTER_CORRUPT'), `a typed error: ${String(err)}`);
      assert.match(err.message, /declared an adapter of 8589934592 bytes; this job's adapter is at most \d+ bytes/);
      assert.ok(proxy.gets() >= 1, 'the device asked for the adapter');
    } finally {
      await proxy.close();
      await server.stop();
    }
    const downloads = path.join(store, 'downloads');
    assert.equal(fs.existsSync(downloads) ? bytesUnder(downloads) : 0, 0, 'nothing of the declared adapter in the store');
    assert.ok(bytesUnder(store) < 2 ** 20, `the device store holds ${bytesUnder(store)} bytes`);
  });
});
