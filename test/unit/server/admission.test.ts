import * as assert from 'node:assert/strict';
import type { JobConfig, ModelSpec } from '../../../common/messages';
import { encodeLayersPayload } from '../../../common/batchPayload';
import { JobRegistry } from '../../../server/JobRegistry';
import { DEFAULT_SESSION_LIMITS } from '../../../server/SessionLimits';
import { HeadStore } from '../../../server/storage/file/HeadStore';
import { JobStore } from '../../../server/storage/file/JobStore';
import { jobMemoryBytes } from '../../../server/training/jobMemory';
import { MAX_IDLE_SESSIONS, OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { initialParameters, initialParametersAsync, sideShape } from '../../../server/training/sideNetworkSpec';
import { jobShape } from '../../../common/AdapterConfig';
import { config, D, model } from '../../helpers/sessionHarness';
import { tmpDir } from '../../helpers/workspaces';
import { connect, useServerContexts } from '../../helpers/serverContext';
import { LocalTrainers } from '../../../server/training/LocalTrainers';

describe('server: loading a job (admission by memory and job limits, ONNX sessions, fresh weights)', function () {
  this.timeout(60_000);
  const server = useServerContexts();
  const context = server.context;

  it('a small label-private job/create declaring a huge side network is refused with LIMIT, from a bound computed from its config, and nothing is stored', async () => {
    const ctx = await context({}, false);
    const huge: ModelSpec = { ...model, layers: 8, hiddenSize: 4096, vocabularySize: 32_000 };
    const ws = await connect(ctx, 'ann', huge);
    const cfg: JobConfig = { ...config, tappedLayers: [0, 1, 2, 3, 4, 5, 6, 7], reduction: 1, labelPrivate: true };
    const need = jobMemoryBytes(cfg, jobShape(cfg, huge));
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
    const one = jobMemoryBytes(config, jobShape(config, model));
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
    const small = { ...ctx, registry: new JobRegistry(new LocalTrainers(server.engine()), ctx.jobs, ctx.heads), limits: { ...ctx.limits, maxJobMemoryBytes: Math.floor(one / 2) } };
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

  it('ONNX Runtime sessions of unloaded jobs are released past a bound (least recently used first)', async () => {
    const own = await OnnxEngine.create({ threads: 1 });
    try {
      const dir = tmpDir('sessions');
      const jobs = new JobStore(dir);
      const registry = new JobRegistry(new LocalTrainers(own), jobs, new HeadStore(dir));
      let shapes = 0;
      for (const reduction of [1, 2, 4, 8, 16]) {
        for (const tappedLayers of [[1], [0, 1]]) {
          for (const sideNetwork of [1, 2] as const) {
            const cfg: JobConfig = { ...config, reduction, tappedLayers, sideNetwork, labelPrivate: true };
            const job = await registry.load(await jobs.create('ann', 's', model, cfg), DEFAULT_SESSION_LIMITS);
            const rows = config.seqLen;
            const layers = encodeLayersPayload(tappedLayers.map(() => new Float32Array(rows * D).fill(0.5)), rows, D, 8);
            await job.sideOutput(0, { payload: layers, rows, lengths: [rows] });
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
});
