import * as assert from 'node:assert/strict';
import type { Worker } from 'node:worker_threads';
import { jobShape } from '../../../../common/AdapterConfig';
import { WireError } from '../../../../common/WireError';
import type { StoredHead } from '../../../../server/storage/records';
import type { JobTrainer, OpenTrainer, Trainers } from '../../../../server/training/JobTrainer';
import { LocalTrainers } from '../../../../server/training/LocalTrainers';
import { OnnxEngine } from '../../../../server/training/onnx/OnnxEngine';
import { TrainerPool } from '../../../../server/training/pool/TrainerPool';
import { batchPayload, config, D, headHalves, headNorm, model, V } from '../../../helpers/sessionHarness';

const head: StoredHead = { rows: V, cols: D, norm: headNorm, halves: headHalves };
const HEAD = 'head-key';

function request(job: string, user: string, labelPrivate = false): OpenTrainer {
  const c = { ...config, labelPrivate, totalSteps: 10 };
  return { job, user, spec: { shape: jobShape(c, model), model, config: c }, ...(labelPrivate ? {} : { headKey: HEAD }), checkpoints: [] };
}

/** The trainer `trainers` opens for `req` (it has no checkpoints: never unreadable). */
async function openTrainer(trainers: Trainers, req: OpenTrainer): Promise<JobTrainer> {
  const opened = await trainers.open(req);
  assert.ok('trainer' in opened, 'opened');
  return opened.trainer;
}

/** Three steps and a checkpoint of job `seed` on `trainers`: every step's result and the checkpoint's bytes. */
async function trainThree(trainers: Trainers, job: string, user: string, seed: number): Promise<{ steps: unknown[]; checkpoint: Buffer }> {
  const trainer = await openTrainer(trainers, request(job, user));
  const steps: unknown[] = [];
  for (let i = 0; i < 3; i++) steps.push(await trainer.train(batchPayload(seed * 10 + i)));
  const checkpoint = Buffer.from((await trainer.encode('checkpoint', { step: trainer.step, kind: 'checkpoint' })) as Uint8Array);
  await trainer.dispose();
  return { steps, checkpoint };
}

describe('training in a pool of worker threads (server/training/pool)', function () {
  this.timeout(120_000);

  it('trains jobs of several users on two workers at once exactly as in this thread: the same steps and checkpoint bytes', async () => {
    const local = new LocalTrainers(await OnnxEngine.create({ threads: 1 }));
    const pool = await TrainerPool.create({ workers: 2, threads: 1 });
    try {
      await local.loadHead(HEAD, head, model.normEpsilon);
      await pool.loadHead(HEAD, head, model.normEpsilon);
      const jobs = [['ann/1', 'ann', 1], ['bob/2', 'bob', 2], ['cid/3', 'cid', 3]] as const;
      const pooled = await Promise.all(jobs.map(([j, u, s]) => trainThree(pool, j, u, s)));
      assert.deepEqual(pool.jobsPerWorker(), [0, 0], 'closed trainers leave their workers');
      for (const [k, [j, u, s]] of jobs.entries()) {
        const here = await trainThree(local, j, u, s);
        assert.deepEqual(pooled[k]!.steps, here.steps, `${j}: steps`);
        assert.ok(pooled[k]!.checkpoint.equals(here.checkpoint), `${j}: checkpoint bytes`);
      }
    } finally {
      await pool.dispose();
      await local.dispose();
    }
  });

  it('shares a busy worker round-robin per user, keeps each job\'s order, and tells a waiting job how much is ahead', async () => {
    const pool = await TrainerPool.create({ workers: 1, threads: 1 });
    try {
      await pool.loadHead(HEAD, head, model.normEpsilon);
      const open = (job: string, user: string): Promise<JobTrainer> => openTrainer(pool, request(job, user));
      const [a1, a2, b1] = [await open('ann/1', 'ann'), await open('ann/2', 'ann'), await open('bob/1', 'bob')];
      const ahead: number[] = [];
      b1.onWaiting = (n) => ahead.push(n);
      const order: string[] = [];
      const op = (t: JobTrainer, name: string, seed: number) => t.train(batchPayload(seed)).then(() => void order.push(name));
      // ann's first step runs at once; the rest queue behind it.
      await Promise.all([op(a1, 'a1#1', 1), op(a1, 'a1#2', 2), op(a2, 'a2#1', 3), op(a1, 'a1#3', 4), op(b1, 'b1#1', 5)]);
      assert.deepEqual(order, ['a1#1', 'a1#2', 'b1#1', 'a2#1', 'a1#3'], 'bob is served after one of ann\'s, not after all of them');
      assert.deepEqual(ahead, [4], 'bob\'s step waited behind four of ann\'s');
      assert.equal(a1.step, 3, 'ann\'s first job took its three steps in order');
    } finally {
      await pool.dispose();
    }
  });

  it('a worker that stops fails its jobs\' work with INTERNAL, marks them lost, and is replaced', async () => {
    const pool = await TrainerPool.create({ workers: 1, threads: 1 });
    const lost: number[] = [];
    pool.onWorkerLost = (i) => lost.push(i);
    try {
      const trainer = await openTrainer(pool, request('ann/1', 'ann', true));
      const slots = (pool as unknown as { slots: { worker: Worker }[] }).slots;
      const pending = trainer.encode('checkpoint', {});
      await slots[0]!.worker.terminate();
      await assert.rejects(pending, (e) => e instanceof WireError && e.code === 'INTERNAL');
      assert.equal(trainer.lost, true);
      await assert.rejects(trainer.forgetPending(), (e) => e instanceof WireError && e.code === 'INTERNAL');
      assert.deepEqual(lost, [0]);
      const again = await openTrainer(pool, request('ann/1', 'ann', true));
      assert.equal(again.step, 0, 'the job opens again on the new worker');
      assert.ok((await again.encode('checkpoint', {})) instanceof Uint8Array);
    } finally {
      await pool.dispose();
    }
  });
});
