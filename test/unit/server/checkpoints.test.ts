import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WebSocket } from 'ws';
import { PROTOCOL_VERSION } from '../../../common/limits';
import { WireError } from '../../../common/WireError';
import { DeviceSession } from '../../../server/DeviceSession';
import { DEFAULT_SESSION_LIMITS } from '../../../server/SessionLimits';
import { JobRegistry } from '../../../server/JobRegistry';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { withDiskBudget } from '../../helpers/diskBudget';
import { batchPayload, config, model, SocketEnd, storesWithHead } from '../../helpers/sessionHarness';
import { LocalTrainers } from '../../../server/training/LocalTrainers';

const batch = (seed: number) => batchPayload(seed);

describe('server: checkpoints on a failing disk', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  it('keeps the previous checkpoint and falls back to it when the newest is damaged; none readable is a typed error', async () => {
    const { heads, jobs } = await storesWithHead();
    const cfg = { ...config, totalSteps: 6, checkpointEvery: 2 };
    const rec = await jobs.create('ann', 'j', model, cfg);
    const first = new JobRegistry(new LocalTrainers(engine), jobs, heads);
    const job = await first.load(rec, DEFAULT_SESSION_LIMITS);
    for (let i = 0; i < 4; i++) await job.train(i, batch(i + 1));
    await first.unload(job); // no checkpoint on unload: the stored ones are steps 4 (newest) and 2
    const dir = jobs.dir('ann', rec.id);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('checkpoint')).sort(), ['checkpoint.mobi', 'checkpoint.prev.mobi']);
    const newest = path.join(dir, 'checkpoint.mobi');
    fs.truncateSync(newest, Math.floor(fs.statSync(newest).size / 2));
    const reloaded = await new JobRegistry(new LocalTrainers(engine), jobs, heads).load((await jobs.get('ann', rec.id))!, DEFAULT_SESSION_LIMITS);
    assert.equal(reloaded.step, 2, 'resumed from the previous checkpoint');
    assert.equal(reloaded.nextIndex, 2);
    fs.truncateSync(path.join(dir, 'checkpoint.prev.mobi'), 100);
    await assert.rejects(new JobRegistry(new LocalTrainers(engine), jobs, heads).load((await jobs.get('ann', rec.id))!, DEFAULT_SESSION_LIMITS), (err) => err instanceof WireError && err.code === 'STORAGE');
  });

  it('a checkpoint the disk cannot take is a STORAGE error to the device (at the next batch: it is stored beside training), never a job/checkpoint', async () => {
    const { heads, jobs } = await storesWithHead();
    const ctx = { heads, jobs, registry: new JobRegistry(new LocalTrainers(engine), jobs, heads), metrics: new ServerMetrics(), limits: DEFAULT_SESSION_LIMITS, backend: 'test', log: () => undefined };
    const ws = new SocketEnd();
    new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
    ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model });
    await ws.next('session/welcome');
    ws.deliver({ type: 'job/create', name: 'j', config: { ...config, checkpointEvery: 1 } });
    const ready = await ws.next('job/ready');
    const b = batchPayload(1);
    await withDiskBudget(0, async () => {
      ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 0, rows: b.rows }, b.payload);
      assert.equal((await ws.next('batch/ack')).index, 0, 'trained; its checkpoint is written beside the next step');
      ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 1, rows: b.rows }, b.payload);
      const err = await ws.next('error');
      assert.equal(err.code, 'STORAGE');
      assert.match(err.message, /what it stored before is kept/);
    });
    assert.ok(!ws.received.some((m) => m.type === 'job/checkpoint'), 'no checkpoint was announced as stored');
    assert.ok(!fs.readdirSync(jobs.dir('ann', ready.jobId)).some((f) => f.startsWith('checkpoint') || f.includes('.tmp-')), 'no checkpoint and no temp file on disk');
  });
});
