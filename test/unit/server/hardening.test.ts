import * as assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { bytesPerRow } from '../../../common/ActivationQuantizer';
import { encodeLayersPayload } from '../../../common/batchPayload';
import { PROTOCOL_VERSION } from '../../../common/limits';
import type { JobConfig, ModelSpec } from '../../../common/messages';
import { SeededRandom } from '../../../common/SeededRandom';
import { DeviceSession } from '../../../server/DeviceSession';
import { JobRegistry } from '../../../server/JobRegistry';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { SessionContext } from '../../../server/SessionContext';
import { DEFAULT_SESSION_LIMITS, SessionLimits } from '../../../server/SessionLimits';
import { HeadStore } from '../../../server/storage/HeadStore';
import { JobStore } from '../../../server/storage/JobStore';
import { jobDiskBytes, jobMemoryBytes } from '../../../server/training/jobMemory';
import { MAX_IDLE_SESSIONS, OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { initialParameters, initialParametersAsync, sideShape } from '../../../server/training/sideNetworkSpec';
import { batchPayload, config, D, headHalves, headNorm, model, SocketEnd, storesWithHead, V } from '../../helpers/sessionHarness';
import { withDiskBudget } from '../../helpers/diskBudget';
import { tmpDir } from '../../helpers/workspaces';

/** Frames a device of `user` sends to a server context shared with other sessions. */
async function connect(ctx: SessionContext, user = 'ann', spec: ModelSpec = model): Promise<SocketEnd> {
  const ws = new SocketEnd();
  new DeviceSession(ctx, ws as unknown as WebSocket, user);
  ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model: spec });
  await ws.next('session/welcome');
  return ws;
}

describe('server hardening (round 2)', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  async function context(limits: Partial<SessionLimits> = {}, withHead = true): Promise<SessionContext> {
    const dir = tmpDir('hardening');
    const { heads, jobs } = withHead ? await storesWithHead() : { heads: new HeadStore(dir), jobs: new JobStore(dir) };
    return { heads, jobs, registry: new JobRegistry(engine, jobs, heads), metrics: new ServerMetrics(), limits: { ...DEFAULT_SESSION_LIMITS, ...limits }, backend: 'test', log: () => undefined };
  }

  it('a small label-private job/create declaring a huge side network is refused with LIMIT, from a bound computed from its config, and nothing is stored', async () => {
    const ctx = await context({}, false);
    const huge: ModelSpec = { ...model, layers: 8, hiddenSize: 4096, vocabularySize: 32_000 };
    const ws = await connect(ctx, 'ann', huge);
    const cfg: JobConfig = { ...config, tappedLayers: [0, 1, 2, 3, 4, 5, 6, 7], reduction: 1, labelPrivate: true };
    const need = jobMemoryBytes(cfg, huge);
    assert.ok(need > DEFAULT_SESSION_LIMITS.maxJobMemoryBytes, `the estimate (${need} bytes) is over the per-job budget`);
    // At least the parameters and Adam's moments: 8 blocks of three 4096 x 4096 matrices, x3, float32.
    assert.ok(need >= 3 * 4 * 8 * 3 * 4096 * 4096);
    ws.deliver({ type: 'job/create', name: 'bomb', config: cfg });
    const err = await ws.next('error');
    assert.equal(err.code, 'LIMIT');
    assert.match(err.message, /GiB/);
    assert.deepEqual(await ctx.jobs.list('ann'), [], 'no record was stored');
    assert.equal(ctx.registry.size, 0, 'nothing was loaded');
  });

  it('the per-user budget counts every loaded job of that user; a stored job over the budget is not loaded on resume', async () => {
    const one = jobMemoryBytes(config, model);
    const ctx = await context({ maxJobMemoryBytes: 2 * one, maxUserMemoryBytes: Math.floor(1.5 * one) });
    const ws = await connect(ctx);
    ws.deliver({ type: 'job/create', name: 'a', config });
    await ws.next('job/ready');
    ws.deliver({ type: 'job/create', name: 'b', config });
    assert.equal((await ws.next('error')).code, 'LIMIT', 'the second job passes the user budget');
    const other = await connect(ctx, 'bob');
    other.deliver({ type: 'job/create', name: 'c', config });
    await other.next('job/ready');
    // The same data folder under a server with a smaller per-job budget: the stored job is refused, not loaded.
    const small = { ...ctx, registry: new JobRegistry(engine, ctx.jobs, ctx.heads), limits: { ...ctx.limits, maxJobMemoryBytes: Math.floor(one / 2) } };
    const again = await connect(small);
    const [rec] = await ctx.jobs.list('ann');
    again.deliver({ type: 'job/resume', jobId: rec!.id });
    assert.equal((await again.next('error')).code, 'LIMIT');
    assert.equal(small.registry.size, 0);
  });

  it('fresh weights are filled in slices: the event loop runs between them, and the values equal the one-go fill', async () => {
    const shape = sideShape(1024, 1, [0, 1]); // 3 x 1M values per block
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const slices = await initialParametersAsync(shape, 7);
    clearInterval(timer);
    assert.ok(ticks > 2, `other work ran ${ticks} times while the weights were filled`);
    const once = initialParameters(shape, 7);
    for (const [name, v] of once) assert.deepEqual(slices.get(name), v, name);
  });

  it('a cancelled or finished job is never loaded for a training frame (JOB_STATE), so cancelled jobs cannot pass the job limit', async () => {
    const ctx = await context({ maxJobsPerUser: 1 });
    const ws = await connect(ctx);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      ws.deliver({ type: 'job/create', name: `j${i}`, config });
      ids.push((await ws.next('job/ready')).jobId);
      ws.deliver({ type: 'job/cancel', jobId: ids[i]! });
      await ws.next('job/done');
    }
    for (const jobId of ids) {
      ws.deliver({ type: 'batch/train', jobId, index: 0, rows: 1 }, Buffer.alloc(1));
      assert.equal((await ws.next('error')).code, 'JOB_STATE');
      ws.deliver({ type: 'batch/grad', jobId, index: 0, rows: 1, lossSum: 0, tokens: 0 }, Buffer.alloc(1));
      assert.equal((await ws.next('error')).code, 'JOB_STATE');
    }
    assert.equal(ctx.registry.size, 0, 'no cancelled job was loaded');
    ws.deliver({ type: 'job/create', name: 'live', config });
    await ws.next('job/ready');
    ws.deliver({ type: 'job/resume', jobId: ids[0]! });
    assert.equal((await ws.next('error')).code, 'LIMIT', 'a resumed job counts toward the limit');
  });

  it('held-out batches take credits like training batches', async () => {
    const ctx = await context({ credits: 1 });
    const ws = await connect(ctx);
    ws.deliver({ type: 'job/create', name: 'e', config });
    const { jobId } = await ws.next('job/ready');
    const b = batchPayload(1);
    ws.deliver({ type: 'batch/eval', jobId, evalId: 'x', index: 0, rows: b.rows }, b.payload);
    ws.deliver({ type: 'batch/eval', jobId, evalId: 'x', index: 1, rows: b.rows }, b.payload);
    assert.equal((await ws.next('error')).code, 'NO_CREDIT');
    assert.equal((await ws.next('eval/result')).index, 0);
    ws.deliver({ type: 'batch/eval', jobId, evalId: 'x', index: 1, rows: b.rows }, b.payload);
    assert.equal((await ws.next('eval/result')).index, 1, 'the credit came back with the answer');
  });

  it('a refused gradient leaves its batch waiting for a valid one; loss sums are bounded', async () => {
    const ctx = await context({}, false);
    const ws = await connect(ctx);
    ws.deliver({ type: 'job/create', name: 'lp', config: { ...config, labelPrivate: true, batchSize: 2 } });
    const { jobId } = await ws.next('job/ready');
    const rows = 2 * config.seqLen;
    const rng = new SeededRandom(9);
    const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * D }, () => rng.normal()));
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows, lengths: [config.seqLen, config.seqLen] }, encodeLayersPayload(layers, rows, D, 8));
    await ws.next('batch/side');
    const grad = (n: number): Buffer => Buffer.alloc(n * bytesPerRow(D, 8));
    const bad: [number, number, number, string][] = [
      [rows / 2, 1, rows / 2, 'half the rows'], [rows, 1, rows + 1, 'more tokens than rows'],
      [rows, 1e308, rows, 'a loss sum no cross-entropy gives'], [rows, -1e30, rows, 'a negative loss sum'],
    ];
    for (const [r, lossSum, tokens, what] of bad) {
      ws.deliver({ type: 'batch/grad', jobId, index: 0, rows: r, lossSum, tokens }, grad(r));
      const err = await ws.next('error');
      assert.equal(err.code, 'BAD_FRAME', what);
      assert.match(err.message, /still waits/, what);
    }
    ws.deliver({ type: 'batch/grad', jobId, index: 0, rows, lossSum: 30, tokens: rows }, grad(rows));
    assert.equal((await ws.next('batch/ack')).step, 1, 'the valid gradient is applied');
    ws.deliver({ type: 'batch/train', jobId, index: 1, rows, lengths: [config.seqLen, config.seqLen] }, encodeLayersPayload(layers, rows, D, 8));
    assert.equal((await ws.next('batch/side')).index, 1, 'the next batch is answered (its credit came back)');
  });

  it('evalIds that are names of Object.prototype are ordinary names', async () => {
    const ctx = await context();
    const ws = await connect(ctx);
    ws.deliver({ type: 'job/create', name: 'p', config });
    const { jobId } = await ws.next('job/ready');
    const b = batchPayload(2);
    for (const evalId of ['__proto__', 'constructor', 'toString']) {
      ws.deliver({ type: 'batch/eval', jobId, evalId, index: 0, rows: b.rows }, b.payload);
      const r = await ws.next('eval/result');
      assert.equal(r.evalId, evalId);
      assert.ok(Number.isFinite(r.lossSum) && r.tokens === b.rows, evalId);
    }
    ws.deliver({ type: 'job/cancel', jobId });
    await ws.next('job/done');
    const evals = (await ctx.jobs.get('ann', jobId))!.evals;
    assert.deepEqual(Object.keys(evals).sort(), ['__proto__', 'constructor', 'toString']);
    for (const v of Object.values(evals)) assert.equal(v.tokens, b.rows);
  });

  it('a second device session sending batches for a job another trains is told so (JOB_STATE), not acknowledged', async () => {
    const ctx = await context();
    const first = await connect(ctx);
    first.deliver({ type: 'job/create', name: 'two', config });
    const { jobId } = await first.next('job/ready');
    const second = await connect(ctx);
    const b = batchPayload(3);
    second.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows }, b.payload);
    const err = await second.next('error');
    assert.equal(err.code, 'JOB_STATE');
    assert.match(err.message, /another device session/);
    assert.ok(!second.received.some((m) => m.type === 'batch/ack'));
    // Resuming takes the job over: then the first device is the one refused.
    second.deliver({ type: 'job/resume', jobId });
    await second.next('job/ready');
    second.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows }, b.payload);
    assert.ok((await second.next('batch/ack')).tokens > 0);
    first.deliver({ type: 'batch/train', jobId, index: 1, rows: b.rows }, b.payload);
    assert.equal((await first.next('error')).code, 'JOB_STATE');
  });

  it('ONNX Runtime sessions of unloaded jobs are released past a bound (least recently used first)', async () => {
    const own = await OnnxEngine.create({ threads: 1 });
    try {
      const dir = tmpDir('sessions');
      const jobs = new JobStore(dir);
      const registry = new JobRegistry(own, jobs, new HeadStore(dir));
      let shapes = 0;
      for (const reduction of [1, 2, 4, 8, 16]) {
        for (const tappedLayers of [[1], [0, 1]]) {
          for (const sideNetwork of [1, 2] as const) {
            const cfg: JobConfig = { ...config, reduction, tappedLayers, sideNetwork, labelPrivate: true };
            const job = await registry.load(await jobs.create('ann', 's', model, cfg), DEFAULT_SESSION_LIMITS);
            const rows = config.seqLen;
            await job.sideOutput(0, tappedLayers.map(() => new Float32Array(rows * D).fill(0.5)), rows, [rows]);
            await registry.unload(job);
            shapes++;
          }
        }
      }
      assert.ok(shapes > MAX_IDLE_SESSIONS, `${shapes} shapes`);
      assert.ok(own.sessionCount <= MAX_IDLE_SESSIONS, `${own.sessionCount} sessions kept (at most ${MAX_IDLE_SESSIONS})`);
    } finally {
      await own.dispose();
    }
  });

  it('per-user storage quotas: a head upload or a job past the quota is LIMIT; another user is not affected', async () => {
    const ctx = await context({ maxUserStorageBytes: jobDiskBytes(config, model) + 1024 }, false);
    const ws = await connect(ctx);
    ws.deliver({ type: 'job/create', name: 'fits', config: { ...config, labelPrivate: true } });
    await ws.next('job/ready');
    ws.deliver({ type: 'job/create', name: 'over', config: { ...config, labelPrivate: true } });
    const err = await ws.next('error');
    assert.equal(err.code, 'LIMIT');
    assert.match(err.message, /MiB/);
    ws.deliver({ type: 'head/begin', rows: V, cols: D }, Buffer.from(headNorm.buffer));
    assert.equal((await ws.next('error')).code, 'LIMIT', 'a head counts toward its uploader\'s quota');
    const bob = await connect(ctx, 'bob');
    bob.deliver({ type: 'head/begin', rows: V, cols: D }, Buffer.from(headNorm.buffer));
    for (let r = 0; r < V; r++) bob.deliver({ type: 'head/chunk', rowStart: r, rowCount: 1 }, Buffer.from(headHalves.buffer, r * D * 2, D * 2));
    bob.deliver({ type: 'head/end' });
    await bob.next('head/stored');
    assert.equal(await ctx.heads.uploadedBytesOf('bob'), HeadStore.bytesOf(V, D));
    assert.equal(await ctx.heads.uploadedBytesOf('ann'), 0);
  });

  it('a head the disk cannot take is STORAGE to its uploader (not INTERNAL), and nothing half-stored remains', async () => {
    const ctx = await context({}, false);
    const ws = await connect(ctx);
    ws.deliver({ type: 'head/begin', rows: V, cols: D }, Buffer.from(headNorm.buffer));
    for (let r = 0; r < V; r++) ws.deliver({ type: 'head/chunk', rowStart: r, rowCount: 1 }, Buffer.from(headHalves.buffer, r * D * 2, D * 2));
    await withDiskBudget(0, async () => {
      ws.deliver({ type: 'head/end' });
      assert.equal((await ws.next('error')).code, 'STORAGE');
    });
    assert.equal(await ctx.heads.has(model), false);
  });

  it('heads no job used for the configured time are deleted, never one a loaded job uses', async () => {
    const dir = tmpDir('heads-ttl');
    const heads = new HeadStore(dir);
    const other = { ...model, fingerprint: 'b'.repeat(64) };
    await heads.save(model, V, D, headNorm, headHalves, 'ann');
    await heads.save(other, V, D, headNorm, headHalves, 'ann');
    const day = 86_400_000;
    assert.equal(await heads.removeUnused(30 * day, new Set()), 0, 'both were used just now');
    assert.equal(await heads.removeUnused(30 * day, new Set([HeadStore.fileName(model)]), Date.now() + 31 * day), 1);
    assert.equal(await heads.has(model), true, 'in use: kept');
    assert.equal(await heads.has(other), false, 'unused for 31 days: deleted');
  });
});
