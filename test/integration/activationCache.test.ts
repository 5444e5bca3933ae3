import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { activationCacheFiles, pruneActivationCaches } from '../../extension/core/job/ActivationCache';
import { FineTuneJob, FineTuneOptions, FineTuneResult, JobProgress } from '../../extension/core/job/FineTuneJob';
import { JobRecordStore } from '../../extension/core/job/JobRecordStore';
import { expectCode } from '../helpers/expectCode';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL = { layers: 2, embd: 64, heads: 2, seed: 9 };

/** A 3-epoch job on a small workspace with the embedded server; returns its result and every [step, loss] it saw. */
async function run(ws: string, extra: Partial<FineTuneOptions>): Promise<{ r: FineTuneResult; losses: [number, number][] }> {
  let last: JobProgress | undefined;
  const r = await new FineTuneJob({
    workspace: ws, model: tinyModel(MODEL), storeDir: tmpDir('cache-store'), threads: 1, epochs: 3, seqLen: 16, batchSize: 2, checkpointEvery: 4,
    ...extra, onProgress: (p) => {
      last = p;
      extra.onProgress?.(p);
    },
  }).run();
  return { r, losses: last!.lossHistory };
}

describe('the activation cache: later epochs skip the forward pass', function () {
  this.timeout(180_000);
  const ws = makeWorkspace(21, 6, 50);
  let plain: { r: FineTuneResult; losses: [number, number][] };
  before(async () => (plain = await run(ws, { activationCacheGiB: 0 })));

  for (const labelPrivate of [false, true]) {
    it(`trains exactly as without it, taking every later batch from it, and is kept for the next job, which runs no forward${labelPrivate ? ' (label-private)' : ''}`, async () => {
      const base = labelPrivate ? await run(ws, { activationCacheGiB: 0, labelPrivate }) : plain;
      assert.equal(base.r.cache, undefined, 'no cache when it is off');
      const store = tmpDir('cache-store');
      const cached = await run(ws, { storeDir: store, labelPrivate });
      const perEpoch = cached.r.steps / 3;
      const c = cached.r.cache!;
      assert.ok(c.hits >= 2 * perEpoch, `every batch of the later epochs from the cache (${JSON.stringify(c)})`);
      // Each sequence computed once: a training one comes back twice, a held-out one (at most 32 plain and 32 FIM) once.
      assert.ok(c.misses >= perEpoch && c.sequenceMisses > 0 && c.sequenceHits + 64 >= 2 * c.sequenceMisses, `the first epoch and evaluation computed (${JSON.stringify(c)})`);
      assert.equal(c.damaged, 0);
      assert.deepEqual(cached.losses, base.losses, 'the same loss at every step');
      assert.equal(cached.r.heldOutLossAfter, base.r.heldOutLossAfter);
      assert.equal(cached.r.bytesSent, base.r.bytesSent, 'the same bytes on the wire');
      // Kept across jobs: the same job again runs no forward at all, and trains the same.
      const again = await run(ws, { storeDir: store, labelPrivate });
      assert.equal(again.r.cache!.sequenceMisses, 0, `a second job computed nothing (${JSON.stringify(again.r.cache)})`);
      assert.equal(again.r.timings.deviceForwardSeconds + again.r.timings.evalForwardSeconds, 0, 'no forward pass');
      assert.deepEqual(again.losses, base.losses);
      assert.equal(again.r.heldOutLossBefore, base.r.heldOutLossBefore);
      assert.equal(again.r.heldOutLossAfter, base.r.heldOutLossAfter);
    });
  }

  it('a budget smaller than the workspace keeps the most recently used within it and recomputes the rest, with the same training', async () => {
    const store = tmpDir('cache-small');
    const budget = 40_000;
    const small = await run(ws, { storeDir: store, activationCacheGiB: budget / 2 ** 30 });
    assert.ok(small.r.cache!.misses > plain.r.steps / 3, `some later batches were computed again (${JSON.stringify(small.r.cache)})`);
    assert.ok(small.r.cache!.sequenceHits > 0, 'and some sequences came from the cache');
    assert.deepEqual(small.losses, plain.losses);
    assert.ok(cacheBytes(store) <= budget, `the folder holds at most the budget (${cacheBytes(store)} bytes)`);
    // mobillm jobs --prune deletes it all, and says how much.
    const kept = cacheBytes(store);
    assert.deepEqual(pruneActivationCaches(store), { caches: 1, bytes: kept });
    assert.equal(activationCacheFiles(store).length, 0);
  });

  it('a stopped job keeps its cache for the resume; a damaged cache is detected and recomputed, never trained on', async () => {
    const store = tmpDir('cache-resume');
    const abort = new AbortController();
    const stepsBefore: number[] = [];
    await expectCode(run(ws, { storeDir: store, signal: abort.signal, onProgress: (p) => (stepsBefore.push(p.step), p.step >= plain.r.steps / 3 + 2 && abort.abort()) }), 'CANCELLED');
    const rec = new JobRecordStore(store).load('last');
    const files = activationCacheFiles(store);
    assert.ok(files.length > 0, 'the cancelled job kept its cache');
    for (const f of files) {
      const bytes = fs.readFileSync(f);
      bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff; // damage every entry
      fs.writeFileSync(f, bytes);
    }
    const resumed = await new FineTuneJob({ workspace: ws, model: tinyModel(MODEL), storeDir: store, threads: 1, resumeJobId: rec.jobId }).run();
    assert.ok(resumed.cache!.damaged > 0, 'damaged entries were found');
    // Recomputed sequences may run in smaller batches than without a cache, where llama.cpp's kernels round differently: equal within 1e-6.
    assert.ok(Math.abs(resumed.heldOutLossAfter - plain.r.heldOutLossAfter) < 1e-6 * plain.r.heldOutLossAfter, `and the training is the one without a cache (${resumed.heldOutLossAfter} against ${plain.r.heldOutLossAfter})`);
  });
});

function cacheBytes(store: string): number {
  return activationCacheFiles(store).reduce((a, f) => a + fs.statSync(f).size, 0);
}
