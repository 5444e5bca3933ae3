import * as assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION } from '../../../common/limits';
import { canTransition, JOB_STATES } from '../../../common/JobState';
import { DeviceSession } from '../../../server/DeviceSession';
import { JobRegistry } from '../../../server/JobRegistry';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { SessionContext } from '../../../server/SessionContext';
import { DEFAULT_SESSION_LIMITS } from '../../../server/SessionLimits';
import { OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { batchPayload, config, D, model, SocketEnd, storesWithHead } from '../../helpers/sessionHarness';
import { LocalTrainers } from '../../../server/training/LocalTrainers';

describe('server: session context and job registry', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  it('job states: one table of allowed transitions, and nothing leaves finished', () => {
    assert.ok(canTransition('training', 'finished'));
    assert.ok(canTransition('training', 'cancelled'));
    assert.ok(canTransition('cancelled', 'training'));
    for (const to of JOB_STATES) assert.equal(canTransition('finished', to), false);
    assert.equal(canTransition('cancelled', 'finished'), false);
  });

  it('the registry loads a job once, shares its model head, counts training jobs per user, and checkpoints on unloadAll', async () => {
    const { heads, jobs } = await storesWithHead();
    const counts: number[] = [];
    const registry = new JobRegistry(new LocalTrainers(engine), jobs, heads, (n) => counts.push(n));
    const a = await jobs.create('ann', 'a', model, config);
    const b = await jobs.create('ann', 'b', model, config);
    const c = await jobs.create('bob', 'c', model, config);
    const L = DEFAULT_SESSION_LIMITS;
    const ja = await registry.load(a, L);
    assert.equal(await registry.load((await jobs.get('ann', a.id))!, L), ja, 'the same job object for the same record');
    await registry.load(b, L);
    await registry.load(c, L);
    assert.equal(registry.size, 3);
    assert.equal(registry.loadedHeads, 1, 'one head for three jobs of one model');
    assert.equal(registry.loadedJobsOf('ann'), 2);
    assert.equal(registry.loadedJobsOf('bob'), 1);
    await ja.train(0, batchPayload(1));
    await registry.unload(ja);
    assert.equal(registry.size, 2);
    assert.equal(registry.loadedHeads, 1);
    assert.equal(await registry.unloadAll(), 0);
    assert.equal(registry.size, 0);
    assert.equal(registry.loadedHeads, 0, 'the head is freed with its last job');
    assert.deepEqual(counts, [1, 2, 3, 2, 1, 0]);
    assert.ok((await jobs.readCheckpoints((await jobs.get('ann', b.id))!))[0], 'unloadAll checkpointed the training job');
  });

  it('the registry unloads jobs no one used for a while, checkpointing those that train', async () => {
    const { heads, jobs } = await storesWithHead();
    const registry = new JobRegistry(new LocalTrainers(engine), jobs, heads);
    const idle = await registry.load(await jobs.create('ann', 'idle', model, config), DEFAULT_SESSION_LIMITS);
    const busy = await registry.load(await jobs.create('ann', 'busy', model, config), DEFAULT_SESSION_LIMITS);
    idle.lastUsedAt -= 60_000;
    assert.equal(await registry.unloadIdle(30_000), 0);
    assert.equal(registry.size, 1);
    assert.equal(registry.isLoaded(busy.rec), true);
    assert.equal(registry.isLoaded(idle.rec), false);
    assert.ok((await jobs.readCheckpoints((await jobs.get('ann', idle.rec.id))!))[0], 'checkpointed on the way out');
  });

  it('job/create computes the job\'s side network once: the session\'s checks, admission, the storage check and the job share it', async () => {
    // The compiled modules call AdapterConfig's exports through the module object: count the calls there.
    const adapterConfig = require('../../../common/AdapterConfig') as { jobShape: (...a: unknown[]) => unknown };
    const real = adapterConfig.jobShape;
    let calls = 0;
    adapterConfig.jobShape = (...a: unknown[]) => {
      calls++;
      return real(...a);
    };
    try {
      const { heads, jobs } = await storesWithHead();
      const ctx: SessionContext = { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics: new ServerMetrics(), limits: DEFAULT_SESSION_LIMITS, backend: 'test-backend', log: () => undefined };
      const ws = new SocketEnd();
      new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
      ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model });
      await ws.next('session/welcome');
      calls = 0;
      ws.deliver({ type: 'job/create', name: 'one', config });
      const ready = await ws.next('job/ready');
      assert.equal(calls, 1, 'jobShape calls for one job/create');
      assert.equal(ctx.registry.loaded('ann', ready.jobId)!.shape.d, D);
      await ctx.registry.unloadAll();
    } finally {
      adapterConfig.jobShape = real;
    }
  });

  it('every reply and every error that answers a request echoes its requestId; a batch\'s error names its job', async () => {
    const { heads, jobs } = await storesWithHead();
    const ctx: SessionContext = { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics: new ServerMetrics(), limits: { ...DEFAULT_SESSION_LIMITS, maxJobsPerUser: 1 }, backend: 'test-backend', log: () => undefined };
    const ws = new SocketEnd();
    new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
    ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model, requestId: 1 });
    assert.equal((await ws.next('session/welcome')).requestId, 1);
    ws.deliver({ type: 'job/create', name: 'one', config, requestId: 2 });
    const ready = await ws.next('job/ready');
    assert.equal(ready.requestId, 2);
    ws.deliver({ type: 'job/create', name: 'two', config, requestId: 3 });
    const limit = await ws.next('error');
    assert.deepEqual([limit.code, limit.requestId], ['LIMIT', 3]);
    ws.deliver({ type: 'job/list', requestId: 4 });
    ws.deliver({ type: 'job/resume', jobId: '00000000-0000-4000-8000-000000000000', requestId: 5 });
    assert.equal((await ws.next('job/list/result')).requestId, 4);
    const unknown = await ws.next('error');
    assert.deepEqual([unknown.code, unknown.requestId], ['NO_SUCH_JOB', 5]);
    const poisoned = batchPayload(2, Number.NaN);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 0, rows: poisoned.rows }, poisoned.payload);
    const refused = await ws.next('error');
    assert.deepEqual([refused.code, refused.jobId, refused.requestId], ['BAD_FRAME', ready.jobId, undefined]);
    ws.deliver({ type: 'job/cancel', jobId: ready.jobId, requestId: 6 });
    assert.equal((await ws.next('job/done')).requestId, 6);
    await ctx.registry.unloadAll();
  });

  it('a session works through its context only: hello, create, train, cancel, resume, finish; its limits come from the context', async () => {
    const { heads, jobs } = await storesWithHead();
    const metrics = new ServerMetrics();
    const log: string[] = [];
    const ctx: SessionContext = { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics, limits: { ...DEFAULT_SESSION_LIMITS, credits: 1, maxJobsPerUser: 1 }, backend: 'test-backend', log: (l) => log.push(l) };
    const ws = new SocketEnd();
    new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
    ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model });
    const welcome = await ws.next('session/welcome');
    assert.equal(welcome.backend, 'test-backend');
    assert.equal(welcome.credits, 1);
    assert.equal(welcome.headCached, true);

    ws.deliver({ type: 'job/create', name: 'one', config });
    const ready = await ws.next('job/ready');
    assert.equal(ready.state, 'training');
    ws.deliver({ type: 'job/create', name: 'two', config });
    assert.equal((await ws.next('error')).code, 'LIMIT', 'maxJobsPerUser from the context');

    const first = batchPayload(1);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 0, rows: first.rows }, first.payload);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 1, rows: first.rows }, first.payload);
    assert.equal((await ws.next('error')).code, 'NO_CREDIT', 'credits from the context');
    assert.equal((await ws.next('batch/ack')).index, 0);

    const poisoned = batchPayload(2, Number.NaN);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 1, rows: poisoned.rows }, poisoned.payload);
    const refused = await ws.next('error');
    assert.equal(refused.code, 'BAD_FRAME', 'NaN activations are a typed error');
    assert.equal(refused.jobId, ready.jobId);
    const next = batchPayload(3);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 2, rows: next.rows }, next.payload);
    const afterSkip = await ws.next('batch/ack');
    assert.equal(afterSkip.index, 2, 'the poisoned batch was skipped and the job goes on');
    assert.ok(Number.isFinite(afterSkip.loss) && afterSkip.loss > 0);

    ws.deliver({ type: 'job/cancel', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'cancelled');
    assert.equal((await jobs.get('ann', ready.jobId))!.state, 'cancelled');
    assert.equal(ctx.registry.size, 0, 'a cancelled job is unloaded');

    ws.deliver({ type: 'job/resume', jobId: ready.jobId });
    const resumed = await ws.next('job/ready');
    assert.equal(resumed.state, 'training');
    assert.equal((await jobs.get('ann', ready.jobId))!.state, 'training', 'the resumed state is on disk');
    for (let i = resumed.nextIndex; i < config.totalSteps; i++) {
      const b = batchPayload(i + 1);
      ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: i, rows: b.rows }, b.payload);
      await ws.next('batch/ack');
    }
    ws.deliver({ type: 'job/finish', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'finished');
    ws.deliver({ type: 'job/resume', jobId: ready.jobId });
    assert.equal((await ws.next('job/ready')).state, 'finished');
    ws.deliver({ type: 'job/cancel', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'finished', 'cancelling a finished job leaves it finished');
    assert.equal((await jobs.get('ann', ready.jobId))!.state, 'finished');
    assert.ok(log.some((l) => l.startsWith('device connected')));
    assert.ok(!log.some((l) => /[^\x20-\x7e]/.test(l)), 'log lines are plain ids and numbers');
  });
});
