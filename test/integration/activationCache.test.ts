import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { activationCacheDir } from '../../extension/core/job/ActivationCache';
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
    it(`trains exactly as without it, taking every later batch from it, and is deleted when the job ends${labelPrivate ? ' (label-private)' : ''}`, async () => {
      const base = labelPrivate ? await run(ws, { activationCacheGiB: 0, labelPrivate }) : plain;
      assert.equal(base.r.cache, undefined, 'no cache when it is off');
      const store = tmpDir('cache-store');
      const cached = await run(ws, { storeDir: store, labelPrivate });
      const perEpoch = cached.r.steps / 3;
      assert.deepEqual(cached.r.cache, { hits: 2 * perEpoch, misses: perEpoch, damaged: 0 }, 'the first epoch computed, the later ones from the cache');
      assert.deepEqual(cached.losses, base.losses, 'the same loss at every step');
      assert.equal(cached.r.heldOutLossAfter, base.r.heldOutLossAfter);
      assert.equal(cached.r.bytesSent, base.r.bytesSent, 'the same bytes on the wire');
      assert.equal(fs.existsSync(activationCacheDir(store, cached.r.jobId)), false, 'deleted when the job ended');
    });
  }

  it('a budget smaller than the workspace keeps what fits and recomputes the rest, with the same training', async () => {
    const small = await run(ws, { activationCacheGiB: 40_000 / 2 ** 30 });
    assert.ok(small.r.cache!.misses > plain.r.steps / 3, `some later batches were computed again (${JSON.stringify(small.r.cache)})`);
    assert.ok(small.r.cache!.hits > 0, 'and some came from the cache');
    assert.deepEqual(small.losses, plain.losses);
  });

  it('a stopped job keeps its cache for the resume; a damaged cache is detected and recomputed, never trained on', async () => {
    const store = tmpDir('cache-resume');
    const abort = new AbortController();
    const stepsBefore: number[] = [];
    await expectCode(run(ws, { storeDir: store, signal: abort.signal, onProgress: (p) => (stepsBefore.push(p.step), p.step >= plain.r.steps / 3 + 2 && abort.abort()) }), 'CANCELLED');
    const rec = new JobRecordStore(store).load('last');
    const dir = activationCacheDir(store, rec.jobId);
    const data = path.join(dir, 'activations.bin');
    assert.ok(fs.statSync(data).size > 0, 'the cancelled job kept its cache');
    const bytes = fs.readFileSync(data);
    for (let at = 100; at < bytes.length; at += 997) bytes[at] = bytes[at]! ^ 0xff; // damage every entry
    fs.writeFileSync(data, bytes);
    const resumed = await new FineTuneJob({ workspace: ws, model: tinyModel(MODEL), storeDir: store, threads: 1, resumeJobId: rec.jobId }).run();
    assert.ok(resumed.cache!.damaged > 0, 'damaged entries were found');
    assert.equal(resumed.heldOutLossAfter, plain.r.heldOutLossAfter, 'and the training is the one without a cache');
    assert.equal(fs.existsSync(dir), false);
  });
});
