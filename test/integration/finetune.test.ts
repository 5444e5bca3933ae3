import * as assert from 'node:assert/strict';
import { ChildProcess, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../../extension/core/job/FineTuneJob';
import { JobRecordStore } from '../../extension/core/job/JobRecordStore';
import type { ResolvedJobSettings } from '../../common/jobSettings';
import { expectCode } from '../helpers/expectCode';
import { decodeAdapter } from '../../common/AdapterFile';
import { MobiServer } from '../../server/MobiServer';
import { tinyModel } from '../helpers/models';
import { addUser, DEVICE_CLI, freePort, killHard, startServerProcess } from '../../harness/serverProcess';
import { listFiles, makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL_OPTS = { layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 2 };

function baseOptions(workspace: string, extra: Partial<FineTuneOptions> = {}): FineTuneOptions {
  return { workspace, model: tinyModel(MODEL_OPTS), storeDir: tmpDir('store'), seqLen: 32, batchSize: 4, steps: 16, checkpointEvery: 5, threads: 1, learningRate: 5e-3, ...extra };
}

function adapterTensors(file: string): Map<string, Float32Array> {
  return new Map([...decodeAdapter(fs.readFileSync(file)).tensors].map(([k, v]) => [k, v.data]));
}

function assertSameAdapter(a: string, b: string): void {
  const ta = adapterTensors(a);
  const tb = adapterTensors(b);
  assert.deepEqual([...ta.keys()], [...tb.keys()]);
  for (const [k, v] of ta) {
    const w = tb.get(k)!;
    let m = 0;
    for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i]! - w[i]!));
    assert.ok(m <= 1e-6, `${k}: max diff ${m}`);
  }
}


describe('fine-tune end to end (real backbone, real server on loopback)', function () {
  this.timeout(300_000);

  it('lowers the held-out loss, acknowledging every batch exactly once (embedded server)', async () => {
    const ws = makeWorkspace(1);
    const r = await new FineTuneJob(baseOptions(ws, { steps: 24 })).run();
    assert.ok(r.heldOutLossAfter < r.heldOutLossBefore, `${r.heldOutLossBefore} -> ${r.heldOutLossAfter}`);
    assert.equal(r.steps, 24);
    assert.deepEqual([...r.acks.keys()].sort((a, b) => a - b), Array.from({ length: 24 }, (_, i) => i));
    assert.ok([...r.acks.values()].every((n) => n === 1), 'each batch acknowledged once');
    assert.ok(fs.existsSync(r.adapter));
    const adapter = decodeAdapter(fs.readFileSync(r.adapter));
    assert.equal(adapter.header.meta.steps, 24);
  });

  describe('with a separately started server process', () => {
    let dataDir: string;
    let port: number;
    let token: string;
    let server: { proc: ChildProcess; url: string } | undefined;
    const ws = makeWorkspace(2);
    let uninterrupted: FineTuneResult;

    before(async () => {
      dataDir = tmpDir('server');
      port = await freePort();
      token = addUser(dataDir, 'alice');
      server = await startServerProcess(dataDir, port);
      uninterrupted = await new FineTuneJob(baseOptions(ws, { server: { url: server.url, token } })).run();
    });
    after(async () => {
      if (server) await killHard(server.proc);
    });

    it('survives kill -9 of the server mid-job: same batch count, same adapter as without the crash', async () => {
      let killed = false;
      let restarted: Promise<void> | undefined;
      const r = await new FineTuneJob(
        baseOptions(ws, {
          server: { url: server!.url, token },
          onProgress: (p) => {
            if (!killed && p.phase === 'training' && p.step >= 7) {
              killed = true;
              const old = server!.proc;
              restarted = killHard(old).then(async () => {
                server = await startServerProcess(dataDir, port);
              });
            }
          },
        }),
      ).run();
      await restarted;
      assert.ok(killed, 'the server was killed during training');
      assert.equal(r.steps, uninterrupted.steps);
      assert.equal(decodeAdapter(fs.readFileSync(r.adapter)).header.meta.steps, 16);
      assert.equal(r.trainTokens, decodeAdapter(fs.readFileSync(r.adapter)).header.meta.trainTokens, 'the summary counts what the server trained');
      assert.equal(r.trainTokens, uninterrupted.trainTokens);
      // Batches 5 and 6 were trained before the crash but after the checkpoint at step 5:
      // they were sent and trained again from the checkpoint, never counted twice.
      assert.ok((r.acks.get(5) ?? 0) >= 1);
      assertSameAdapter(r.adapter, uninterrupted.adapter);
      assert.ok(Math.abs(r.heldOutLossAfter - uninterrupted.heldOutLossAfter) < 1e-6);
    });

    it('refuses a wrong token and a server that is down, with typed errors and nothing written', async () => {
      const store = tmpDir('store');
      await expectCode(new FineTuneJob(baseOptions(ws, { storeDir: store, server: { url: server!.url, token: 'alice.wrong' } })).run(), 'UNAUTHORIZED');
      const downPort = await freePort();
      await expectCode(new FineTuneJob(baseOptions(ws, { storeDir: store, server: { url: `ws://127.0.0.1:${downPort}`, token } })).run(), 'SERVER_UNREACHABLE');
      assert.ok(!fs.existsSync(path.join(store, 'adapters')), 'no adapter written');
    });

    it('refuses to resume a job with a different model file', async () => {
      const other = tinyModel({ ...MODEL_OPTS, seed: 99 });
      await expectCode(new FineTuneJob(baseOptions(ws, { storeDir: uninterruptedStore(uninterrupted), model: other, resumeJobId: uninterrupted.jobId, server: { url: server!.url, token } })).run(), 'MODEL_MISMATCH');
    });
  });

  it('trains 4 devices at once with nothing crossed between them', async () => {
    const dataDir = tmpDir('server4');
    const server = new MobiServer({ dataDir, port: 0 });
    const { url } = await server.start();
    try {
      const users = ['u0', 'u1', 'u2', 'u3'];
      const tokens = await Promise.all(users.map((u) => server.users.add(u)));
      const workspaces = users.map((_, i) => makeWorkspace(10 + i));
      const opts = (i: number): FineTuneOptions => baseOptions(workspaces[i]!, { seed: 1 + i, steps: 10, server: { url, token: tokens[i]! } });
      const alone = await new FineTuneJob(opts(0)).run();
      const together = await Promise.all(users.map((_, i) => new FineTuneJob(opts(i)).run()));
      // Device 0's job trained next to three others gives exactly what it gives alone.
      assertSameAdapter(together[0]!.adapter, alone.adapter);
      const ids = new Set(together.map((r) => r.jobId));
      assert.equal(ids.size, 4);
      for (const [i, r] of together.entries()) {
        assert.equal(r.steps, 10);
        assert.ok(r.heldOutLossAfter < r.heldOutLossBefore);
        const mine = (await server.jobs.list(users[i]!)).map((j) => j.id);
        assert.ok(mine.includes(r.jobId));
        for (const [k, other] of together.entries()) if (k !== i) assert.ok(!mine.includes(other.jobId), 'a job listed under another user');
      }
    } finally {
      await server.stop();
    }
  });

  it('sends no workspace text: every frame recorded, and the server keeps none', async () => {
    const ws = makeWorkspace(3);
    fs.writeFileSync(path.join(ws, 'secret_logic.ts'), 'export const launchCodes = computeTheVerySecretLaunchSequence(alpha, beta);\n'.repeat(20));
    const frames: Buffer[] = [];
    const dataDir = tmpDir('privacy');
    const server = new MobiServer({ dataDir, port: 0 });
    const { url } = await server.start();
    try {
      const token = await server.users.add('bob');
      await new FineTuneJob(baseOptions(ws, { server: { url, token }, steps: 8, onFrameSent: (f) => frames.push(Buffer.from(f)) })).run();
    } finally {
      await server.stop();
    }
    const wire = Buffer.concat(frames);
    assert.ok(wire.length > 10_000, 'frames were recorded');
    const lines = fs
      .readdirSync(ws)
      .flatMap((f) => fs.readFileSync(path.join(ws, f), 'utf8').split('\n'))
      .map((l) => l.trim())
      .filter((l) => l.length >= 20);
    assert.ok(lines.length > 50);
    const serverFiles = listFiles(dataDir).map((f) => fs.readFileSync(f));
    for (const line of new Set(lines)) {
      for (const form of [line, line.replace(/ /g, '\u2581')]) {
        const needle = Buffer.from(form, 'utf8');
        assert.ok(!wire.includes(needle), `a workspace line crossed the wire: ${line.slice(0, 30)}...`);
        for (const f of serverFiles) assert.ok(!f.includes(needle), 'a workspace line is on the server disk');
      }
    }
  });

  it('a resumed job keeps every setting it was created with; a conflicting one is BAD_ARGUMENT; "last" finds it', async () => {
    const ws = makeWorkspace(12, 8, 120);
    const store = tmpDir('resume-store');
    const abort = new AbortController();
    const first = new FineTuneJob(baseOptions(ws, { storeDir: store, steps: 30, seqLen: 16, bits: 16, signal: abort.signal, onProgress: (p) => p.step >= 6 && abort.abort() }));
    await expectCode(first.run(), 'CANCELLED');
    const rec = new JobRecordStore(store).load('last');
    assert.equal(rec.phase, 'cancelled');
    assert.equal(rec.config?.totalSteps, 30);
    await expectCode(new FineTuneJob({ workspace: ws, model: tinyModel(MODEL_OPTS), storeDir: store, threads: 1, resumeJobId: 'last', epochs: 2 }).run(), 'BAD_ARGUMENT');
    assert.equal(rec.settings?.labelPrivate, false, 'the record keeps the mode it was made in');
    // What the host is shown is the job's own settings, not its defaults of today: in the confirmation and in every progress report.
    const confirmed: ResolvedJobSettings[] = [];
    const reported = new Set<string>();
    const resumed = await new FineTuneJob({
      workspace: ws, model: tinyModel(MODEL_OPTS), storeDir: store, threads: 1, resumeJobId: 'last',
      confirm: (_scan, settings) => (confirmed.push(settings), true), onProgress: (p) => reported.add(JSON.stringify(p.settings && [p.settings.bits, p.settings.seqLen, p.settings.steps])),
    }).run();
    assert.deepEqual(confirmed.map((c) => [c.bits, c.seqLen, c.steps, c.labelPrivate]), [[16, 16, 30, false]]);
    assert.deepEqual([...reported], [JSON.stringify([16, 16, 30])]);
    assert.equal(resumed.jobId, rec.jobId);
    assert.equal(resumed.steps, 30, 'the job ran to its own 30 steps, not to one epoch of the defaults');
    assert.equal(resumed.config.seqLen, 16);
    assert.equal(new JobRecordStore(store).load(rec.jobId).phase, 'done');
  });

  it('fails clearly on bad input, through the CLI, with a non-zero exit and nothing half-written', async () => {
    const store = tmpDir('store');
    const cli = (args: string[]) => spawnSync(process.execPath, [DEVICE_CLI, 'finetune', '--store', store, '--model', tinyModel(MODEL_OPTS), '--steps', '2', '--seq-len', '16', ...args], { encoding: 'utf8' });
    const empty = tmpDir('empty');
    let r = cli(['--workspace', empty]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error\[EMPTY_WORKSPACE\]/);
    const binaries = tmpDir('bin');
    fs.writeFileSync(path.join(binaries, 'a.bin'), Buffer.from([0, 1, 2, 3, 0, 255]));
    fs.writeFileSync(path.join(binaries, 'b.png'), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 0, 0]));
    r = cli(['--workspace', binaries]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error\[EMPTY_WORKSPACE\]/);
    r = cli(['--workspace', makeWorkspace(4), '--server', `ws://127.0.0.1:${await freePort()}`, '--token', 'x.y']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error\[SERVER_UNREACHABLE\]/);
    r = cli(['--workspace', '/definitely/not/here']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error\[EMPTY_WORKSPACE\]/);
    assert.ok(!fs.existsSync(path.join(store, 'adapters')), 'no adapter written');
    assert.ok(!fs.existsSync(path.join(store, 'jobs')), 'no job record written');
  });
});

function uninterruptedStore(r: FineTuneResult): string {
  // The store holds the job record: adapters/<ws>/<fp>/adapter.mobi -> store root.
  return path.resolve(path.dirname(r.adapter), '..', '..', '..');
}

