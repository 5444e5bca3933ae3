import * as assert from 'node:assert/strict';
import { bytesPerRow } from '../../../common/ActivationQuantizer';
import { encodeLayersPayload } from '../../../common/batchPayload';
import { SeededRandom } from '../../../common/SeededRandom';
import { batchPayload, config, D } from '../../helpers/sessionHarness';
import { connect, useServerContexts } from '../../helpers/serverContext';

describe('server: the rules of a job\'s batches (credits, gradients, held-out names, one training session)', function () {
  this.timeout(60_000);
  const { context } = useServerContexts();

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
});
