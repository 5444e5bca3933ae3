import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { WebSocket } from 'ws';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { MobiError } from '../../extension/core/MobiError';
import { ServerConnection } from '../../extension/core/connection/ServerConnection';
import { SeededRandom } from '../../common/SeededRandom';
import { decodeServerFrame, encodeFrame } from '../../common/codec';
import { PROTOCOL_VERSION } from '../../common/limits';
import { ModelSpec, ServerMessage } from '../../common/messages';
import { MobiServer } from '../../server/MobiServer';
import { tinyModel } from '../helpers/models';
import { addUser, freePort, killHard, SERVER_CLI, startServerProcess } from '../../harness/serverProcess';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const spec = (fp: string): ModelSpec => ({ fingerprint: fp, architecture: 'llama', layers: 2, hiddenSize: 32, vocabularySize: 300, normEpsilon: 1e-5, headDigest: 'c'.repeat(64) });

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

/** Opens a raw socket; resolves with the HTTP status when refused. */
function rawConnect(url: string, token?: string): Promise<WebSocket | number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.once('error', () => resolve(-1));
  });
}

describe('side-tuning server', function () {
  this.timeout(300_000);
  let server: MobiServer;
  let url: string;
  let dataDir: string;

  before(async () => {
    dataDir = tmpDir('srv');
    server = new MobiServer({ dataDir, port: 0 });
    ({ url } = await server.start());
  });
  after(() => server.stop());

  it('refuses no token, a wrong token and a revoked token before reading any message', async () => {
    assert.equal(await rawConnect(url), 401);
    assert.equal(await rawConnect(url, 'nobody.secret'), 401);
    const token = await server.users.add('carol');
    const ok = await rawConnect(url, token);
    assert.ok(ok instanceof WebSocket);
    ok.close();
    await server.users.revoke('carol');
    assert.equal(await rawConnect(url, token), 401);
  });

  it('isolates users: another user\'s job cannot be resumed, listed or downloaded', async () => {
    const ws = makeWorkspace(5);
    const tokenA = await server.users.add('dave');
    const tokenB = await server.users.add('erin');
    const r = await new FineTuneJob({ workspace: ws, model: tinyModel({ layers: 2, embd: 32, heads: 2 }), storeDir: tmpDir('st'), server: { url, token: tokenA }, steps: 3, seqLen: 16, threads: 1 }).run();
    const fp = JSON.parse(fs.readFileSync(path.join(dataDir, 'jobs', 'dave', r.jobId, 'job.json'), 'utf8')).model.fingerprint as string;
    const conn = await ServerConnection.open(url, tokenB, { ...spec(fp), layers: 2, hiddenSize: 32 });
    try {
      await assert.rejects(conn.request({ type: 'job/resume', jobId: r.jobId }), (e: MobiError) => e.code === 'NO_SUCH_JOB');
      await assert.rejects(conn.request({ type: 'adapter/get', jobId: r.jobId }), (e: MobiError) => e.code === 'NO_SUCH_JOB');
      const list = (await conn.request({ type: 'job/list' })).message;
      assert.deepEqual(list.jobs, []);
    } finally {
      conn.close();
    }
    const connA = await ServerConnection.open(url, tokenA, spec(fp));
    try {
      const list = (await connA.request({ type: 'job/list' })).message.jobs as { id: string }[];
      assert.deepEqual(list.map((j) => j.id), [r.jobId]);
      const got = await connA.request({ type: 'adapter/get', jobId: r.jobId });
      assert.equal(got.payload.length, got.message.bytes);
    } finally {
      connA.close();
    }
  });

  it('closes a device speaking another protocol version with a typed error', async () => {
    const token = await server.users.add('frank');
    await assert.rejects(ServerConnection.open(url, token, spec('a'.repeat(64)), { protocol: 99 }), (e: MobiError) => e.code === 'VERSION_MISMATCH');
  });

  it('answers 10,000 malformed or random frames with a typed error or a close, and keeps serving a healthy device', async () => {
    const token = await server.users.add('mallory');
    const rng = new SeededRandom(1234);
    const valid = encodeFrame({ type: 'batch/train', jobId: 'x', index: 0, rows: 4 }, Buffer.alloc(64));
    const makeFrame = (i: number): { data: Buffer | string; binary: boolean } => {
      switch (i % 10) {
        case 0: return { data: Buffer.from(Array.from({ length: rng.int(200) }, () => rng.int(256))), binary: true };
        case 1: return { data: valid.subarray(0, rng.int(valid.length)), binary: true };
        case 2: return { data: encodeFrame({ type: `nope/${rng.int(1e6)}` }), binary: true };
        case 3: return { data: encodeFrame({ type: 'job/resume', jobId: rng.int(100) } as never), binary: true };
        case 4: return { data: encodeFrame({ type: 'batch/train', jobId: 'x', index: -1, rows: 'many' } as never), binary: true };
        case 5: return { data: encodeFrame({ type: 'batch/train', jobId: '00000000-0000-0000-0000-000000000000', index: 3, rows: 4 }, Buffer.alloc(rng.int(100))), binary: true };
        case 6: return { data: 'a text frame', binary: false };
        case 7: {
          const b = Buffer.alloc(8);
          b.writeUInt32LE(0xffffffff, 0);
          return { data: b, binary: true };
        }
        case 8: return { data: encodeFrame({ type: 'head/chunk', rowStart: 5, rowCount: 1e9 }), binary: true };
        default: {
          if (i % 500 === 9) {
            const f = Buffer.from(valid);
            f.write('{"v":0', 4, 'utf8'); // a version no release had (the real one is one digit too): the server closes
            return { data: f, binary: true };
          }
          return { data: encodeFrame({ type: 'job/list', extra: rng.next() } as never), binary: true };
        }
      }
    };
    let ws: WebSocket | undefined;
    let errors = 0;
    let closes = 0;
    let lists = 0;
    const codes = new Set<string>();
    for (let i = 0; i < 10_000; i++) {
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        const c = await rawConnect(url, token);
        assert.ok(c instanceof WebSocket, 'reconnect after a close');
        ws = c;
        if (i % 2 === 0) {
          // Half the connections say hello first, so messages get past the order check.
          const welcome = new Promise<void>((r) => ws!.once('message', () => r()));
          ws.send(encodeFrame({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'fuzz', model: spec('b'.repeat(64)) }), { binary: true });
          await welcome;
        }
      }
      const sock = ws;
      const { data, binary } = makeFrame(i);
      const outcome = await new Promise<ServerMessage | 'closed'>((resolve) => {
        const onMsg = (d: Buffer): void => {
          cleanup();
          resolve(decodeServerFrame(d).message);
        };
        const onClose = (): void => {
          cleanup();
          resolve('closed');
        };
        const cleanup = (): void => {
          sock.off('message', onMsg);
          sock.off('close', onClose);
        };
        sock.on('message', onMsg);
        sock.on('close', onClose);
        sock.send(data, { binary });
      });
      if (outcome === 'closed') closes++;
      else if (outcome.type === 'error') {
        errors++;
        codes.add(outcome.code);
        if (outcome.fatal) await new Promise<void>((r) => (sock.readyState === WebSocket.CLOSED ? r() : sock.once('close', () => r())));
      } else if (outcome.type === 'job/list/result') lists++;
      else assert.fail(`unexpected reply ${outcome.type}`);
    }
    ws?.close();
    process.stdout.write(`      10,000 frames: ${errors} typed errors (${[...codes].sort().join(', ')}), ${closes} closes, ${lists} valid lists\n`);
    assert.equal(errors + closes + lists, 10_000);
    for (const c of ['BAD_FRAME', 'UNKNOWN_TYPE', 'OUT_OF_ORDER', 'VERSION_MISMATCH']) assert.ok(codes.has(c), `saw ${c}`);
    assert.equal((await get(url.replace('ws:', 'http:') + '/healthz')).status, 200);
    // A healthy device still trains.
    const healthy = await server.users.add('grace');
    const r = await new FineTuneJob({ workspace: makeWorkspace(6), model: tinyModel({ layers: 2, embd: 32, heads: 2 }), storeDir: tmpDir('st'), server: { url, token: healthy }, steps: 4, seqLen: 16, threads: 1 }).run();
    assert.equal(r.steps, 4);
  });

  it('serves /healthz and Prometheus /metrics', async () => {
    const base = url.replace('ws:', 'http:');
    const h = await get(`${base}/healthz`);
    assert.equal(h.status, 200);
    assert.equal(JSON.parse(h.body).ok, true);
    const m = await get(`${base}/metrics`);
    assert.equal(m.status, 200);
    for (const name of ['mobillm_train_steps_total', 'mobillm_bytes_received_total', 'mobillm_errors_total', 'mobillm_jobs_created_total', 'mobillm_train_tokens_per_second']) assert.match(m.body, new RegExp(name));
    assert.match(m.body, /mobillm_train_steps_total [1-9]/);
    assert.equal((await get(`${base}/nope`)).status, 404);
  });
});

describe('mobillm-server CLI (the container entrypoint)', function () {
  this.timeout(120_000);

  it('adds, lists and revokes users; tokens are stored hashed only', () => {
    const dataDir = tmpDir('cli');
    const token = addUser(dataDir, 'heidi');
    assert.match(token, /^heidi\.[A-Za-z0-9_-]{20,}$/);
    const stored = fs.readFileSync(path.join(dataDir, 'users.json'), 'utf8');
    assert.ok(!stored.includes(token.split('.')[1]!), 'the token secret is not on disk');
    const run = (args: string[]) => spawnSync(process.execPath, [SERVER_CLI, 'users', ...args, '--data', dataDir], { encoding: 'utf8' });
    assert.match(run(['list']).stdout, /heidi\t.*\tactive/);
    const dup = run(['add', 'heidi']);
    assert.equal(dup.status, 1);
    assert.match(dup.stderr, /error\[EXISTS\]/);
    assert.equal(run(['revoke', 'heidi']).status, 0);
    assert.match(run(['list']).stdout, /heidi\t.*\trevoked/);
    assert.match(run(['add', 'Bad Name']).stderr, /error\[BAD_NAME\]/);
  });

  it('starts, reports health, and checkpoints on SIGTERM', async () => {
    const dataDir = tmpDir('cli2');
    const token = addUser(dataDir, 'ivan');
    const port = await freePort();
    const { proc, url } = await startServerProcess(dataDir, port);
    try {
      const h = await get(`http://127.0.0.1:${port}/healthz`);
      assert.equal(h.status, 200);
      // Start a job and stop the server mid-way with SIGTERM: its checkpoint must hold the progress.
      let jobId: string | undefined;
      const job = new FineTuneJob({
        workspace: makeWorkspace(7), model: tinyModel({ layers: 2, embd: 32, heads: 2 }), storeDir: tmpDir('st'), server: { url, token },
        // The standard mode: a label-private job with a head update keeps its last periodic checkpoint instead (the device holds that half).
        steps: 40, seqLen: 16, threads: 1, checkpointEvery: 1000, reconnectTimeoutMs: 1000, labelPrivate: false,
        onProgress: (p) => {
          if (p.step >= 3 && !jobId) {
            jobId = p.jobId;
            proc.kill('SIGTERM');
          }
        },
      });
      await assert.rejects(job.run(), (e: MobiError) => e.code === 'CONNECTION_LOST');
      const exitCode = await new Promise<number | null>((r) => (proc.exitCode !== null ? r(proc.exitCode) : proc.once('exit', (c) => r(c))));
      assert.equal(exitCode, 0);
      const rec = JSON.parse(fs.readFileSync(path.join(dataDir, 'jobs', 'ivan', jobId!, 'job.json'), 'utf8'));
      assert.ok(rec.step >= 3, `checkpointed step ${rec.step}`);
      assert.ok(fs.existsSync(path.join(dataDir, 'jobs', 'ivan', jobId!, 'checkpoint.mobi')));
    } finally {
      await killHard(proc);
    }
  });
});
