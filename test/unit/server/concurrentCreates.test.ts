import * as assert from 'node:assert/strict';
import type { JobConfig, ModelSpec, ServerMessage } from '../../../common/messages';
import { jobShape } from '../../../common/AdapterConfig';
import { JobRegistry } from '../../../server/JobRegistry';
import type { OpenTrainer, OpenedTrainer } from '../../../server/training/JobTrainer';
import { jobDiskBytes } from '../../../server/training/jobMemory';
import { LocalTrainers } from '../../../server/training/LocalTrainers';
import { config, model, SocketEnd } from '../../helpers/sessionHarness';
import { connect, useServerContexts } from '../../helpers/serverContext';

/** Waits until `n` replies to job/create (job/ready or error) arrived on `ws`, and takes them. */
async function replies(ws: SocketEnd, n: number): Promise<ServerMessage[]> {
  for (let i = 0; i < 3000 && ws.received.filter((m) => m.type === 'job/ready' || m.type === 'error').length < n; i++) await new Promise((r) => setTimeout(r, 10));
  const got = ws.received.filter((m) => m.type === 'job/ready' || m.type === 'error');
  assert.equal(got.length, n, `${got.length} of ${n} replies arrived`);
  ws.received.length = 0;
  return got;
}

describe('server: concurrent job/create frames (admission counts creates in progress; a refused create stores nothing)', function () {
  this.timeout(120_000);
  const server = useServerContexts();

  it('the job limit of 4 admits exactly 4 of 100 small creates sent at once; the other 96 are refused with LIMIT and leave no record', async () => {
    const ctx = await server.context({ maxJobsPerUser: 4 });
    const ws = await connect(ctx);
    for (let i = 0; i < 100; i++) ws.deliver({ type: 'job/create', name: `j${i}`, config });
    const got = await replies(ws, 100);
    const ready = got.filter((m) => m.type === 'job/ready');
    const refused = got.filter((m) => m.type === 'error');
    assert.equal(ready.length, 4);
    assert.deepEqual([...new Set(refused.map((m) => (m.type === 'error' ? m.code : '')))], ['LIMIT']);
    const stored = await ctx.jobs.list('ann');
    assert.equal(stored.length, 4, 'one record per admitted job, none for a refused one');
    assert.deepEqual(new Set(stored.map((r) => r.id)), new Set(ready.map((m) => (m.type === 'job/ready' ? m.jobId : ''))));
    assert.equal(ctx.registry.loadedJobsOf('ann'), 4);
  });

  it('20 label-private creates at once that the disk quota holds one of: one is ready, 19 are refused, and after cancelling it a small job is admitted', async () => {
    const big: JobConfig = { ...config, labelPrivate: true, reduction: 1, headRank: 0 };
    const small: JobConfig = { ...config, labelPrivate: true, reduction: 8, headRank: 0 };
    const wide: ModelSpec = { ...model, hiddenSize: 1024, vocabularySize: 32_000 };
    const bigDisk = jobDiskBytes(jobShape(big, wide));
    assert.ok(jobDiskBytes(jobShape(small, wide)) < bigDisk / 2);
    const ctx = await server.context({ maxUserStorageBytes: Math.floor(1.5 * bigDisk) }, false);
    const ws = await connect(ctx, 'ann', wide);
    for (let i = 0; i < 20; i++) ws.deliver({ type: 'job/create', name: `big${i}`, config: big });
    const got = await replies(ws, 20);
    const ready = got.filter((m) => m.type === 'job/ready');
    assert.equal(ready.length, 1);
    for (const m of got) if (m.type === 'error') assert.match(`${m.code} ${m.message}`, /^LIMIT .*disk/);
    assert.equal((await ctx.jobs.list('ann')).length, 1, 'the refused creates stored nothing');
    const jobId = ready[0]!.type === 'job/ready' ? ready[0]!.jobId : '';
    ws.deliver({ type: 'job/cancel', jobId });
    await ws.next('job/done');
    ws.deliver({ type: 'job/create', name: 'small', config: small });
    await ws.next('job/ready');
  });

  it('a job whose trainer fails to open right after its record was written is removed again, with its folder', async () => {
    const ctx = await server.context({}, false);
    class FailingTrainers extends LocalTrainers {
      override async open(_request: OpenTrainer): Promise<OpenedTrainer> {
        throw new Error('no trainer today');
      }
    }
    const registry = new JobRegistry(new FailingTrainers(server.engine()), ctx.jobs, ctx.heads);
    const ws = await connect({ ...ctx, registry });
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, labelPrivate: true } });
    assert.equal((await ws.next('error')).code, 'INTERNAL');
    assert.deepEqual(await ctx.jobs.list('ann'), []);
    assert.equal(await ctx.jobs.bytesOf('ann'), 0, 'nothing of it is left on disk');
    assert.equal(registry.size, 0);
  });
});
