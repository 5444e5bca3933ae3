import * as assert from 'node:assert/strict';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../../extension/core/job/FineTuneJob';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL = { layers: 2, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 9 };

async function run(workspace: string, extra: Partial<FineTuneOptions>): Promise<{ r: FineTuneResult; losses: number[] }> {
  const losses: number[] = [];
  const r = await new FineTuneJob({
    workspace, model: tinyModel(MODEL), storeDir: tmpDir('ctx-store'), seqLen: 128, batchSize: 4, steps: 16, threads: 1, learningRate: 5e-3, seed: 3, headRank: 0, bits: 16, ...extra,
    onProgress: (p) => (losses.length = 0, losses.push(...p.lossHistory.map(([, l]) => l))),
  }).run();
  return { r, losses };
}

describe('fine-tuning with retrieved context in the training sequences (real llama.cpp, embedded server)', function () {
  this.timeout(300_000);
  const ws = makeWorkspace(21, 6, 40);

  it('trains on other sequences than without it, leaves the held-out set alone, and both modes mask the context the same way', async () => {
    const plain = await run(ws, {});
    const standard = await run(ws, { contextRate: 1 });
    const labelPrivate = await run(ws, { contextRate: 1, labelPrivate: true });
    assert.equal(standard.r.heldOutLossBefore, plain.r.heldOutLossBefore, 'the held-out sequences carry no context');
    // The same steps train fewer tokens: each sequence's context takes rows that are not trained on.
    assert.ok(standard.r.trainTokens < plain.r.trainTokens, `tokens trained on: ${standard.r.trainTokens} with context, ${plain.r.trainTokens} without`);
    assert.equal(labelPrivate.r.trainTokens, standard.r.trainTokens, 'the device and the server count the same rows');
    assert.notDeepEqual(standard.losses, plain.losses, 'the sequences changed');
    // The device's loss (label-private) and the server's (standard) weigh the same rows: the context's are masked on both.
    const worst = Math.max(...standard.losses.map((l, i) => Math.abs(l - labelPrivate.losses[i]!) / l));
    assert.ok(worst < 1e-3, `largest relative difference of the per-step losses: ${worst}`);
    assert.ok(standard.r.heldOutLossAfter < standard.r.heldOutLossBefore, `held-out ${standard.r.heldOutLossBefore} -> ${standard.r.heldOutLossAfter}`);
  });

  it('with the head update, label-private (its head over the trained rows only, the context\'s rows left out) trains as the standard mode does', async () => {
    const standard = await run(ws, { contextRate: 1, headRank: 16 });
    const labelPrivate = await run(ws, { contextRate: 1, headRank: 16, labelPrivate: true });
    const worst = Math.max(...standard.losses.map((l, i) => Math.abs(l - labelPrivate.losses[i]!) / l));
    assert.ok(worst < 1e-3, `largest relative difference of the per-step losses: ${worst}`);
    const heldOut = Math.abs(standard.r.heldOutLossAfter - labelPrivate.r.heldOutLossAfter) / standard.r.heldOutLossAfter;
    assert.ok(heldOut < 1e-3, `held-out after: standard ${standard.r.heldOutLossAfter}, label-private ${labelPrivate.r.heldOutLossAfter}`);
  });
});
