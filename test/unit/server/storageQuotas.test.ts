import * as assert from 'node:assert/strict';
import { HeadStore } from '../../../server/storage/file/HeadStore';
import { headBytes, headName } from '../../../server/storage/records';
import { jobDiskBytes } from '../../../server/training/jobMemory';
import { jobShape } from '../../../common/AdapterConfig';
import { config, D, headHalves, headNorm, model, V } from '../../helpers/sessionHarness';
import { withDiskBudget } from '../../helpers/diskBudget';
import { tmpDir } from '../../helpers/workspaces';
import { connect, useServerContexts } from '../../helpers/serverContext';

describe('server: storage quotas and model heads on disk', function () {
  this.timeout(60_000);
  const { context } = useServerContexts();

  it('per-user storage quotas: a head upload or a job past the quota is LIMIT; another user is not affected', async () => {
    const ctx = await context({ maxUserStorageBytes: jobDiskBytes(jobShape(config, model)) + 1024 }, false);
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
    assert.equal(await ctx.heads.uploadedBytesOf('bob'), headBytes(V, D));
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
    assert.equal(await heads.removeUnused(30 * day, new Set([headName(model)]), Date.now() + 31 * day), 1);
    assert.equal(await heads.has(model), true, 'in use: kept');
    assert.equal(await heads.has(other), false, 'unused for 31 days: deleted');
  });
});
