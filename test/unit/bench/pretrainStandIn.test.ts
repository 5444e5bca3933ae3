import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PretrainSettings } from '../../../bench/lib/pretrain/Pretrainer';
import { pretrainStandIn, windowBatch } from '../../../bench/lib/pretrain/pretrainStandIn';
import { SeededRandom } from '../../../common/SeededRandom';
import { tmpDir } from '../../helpers/workspaces';

/** The stand-in's pretraining run (issue 37): windows, and a build in parts that equals one run. */
describe('the stand-in\'s pretraining run', function () {
  this.timeout(120_000);
  const dir = tmpDir('pretrain-run');
  const shape = { layers: 1, embd: 32, heads: 2, ff: 64, vocab: 64 };
  const settings: PretrainSettings = { batch: 2, window: 16, peakLr: 3e-3, warmupSteps: 5, finalLrRatio: 0.1, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, clipNorm: 1, seed: 3 };
  const rng = new SeededRandom(9);
  // 201 windows: windows 99 and 199 are held out for validation, 199 train in 99 steps.
  const tokens = Int32Array.from({ length: 16 * 201 + 5 }, (_, i) => 3 + ((i * 7) % 11) + (rng.next() < 0.1 ? rng.int(50) : 0));
  const quiet = (): void => undefined;

  it('a window starts with BOS and predicts each of its own tokens once', () => {
    const { ids, targets } = windowBatch(tokens, [2, 0], 16, 1);
    assert.deepEqual([...ids.subarray(0, 3)].map(Number), [1, tokens[32], tokens[33]]);
    assert.deepEqual([...targets.subarray(0, 16)].map(Number), [...tokens.subarray(32, 48)]);
    assert.deepEqual([...targets.subarray(16, 32)].map(Number), [...tokens.subarray(0, 16)]);
  });

  it('stopped at a step and run again, it ends with exactly the weights of one uninterrupted run', async () => {
    const whole = await pretrainStandIn({ shape, settings, tokens, bos: 1, checkpoint: path.join(dir, 'a.ckpt'), threads: 1, log: quiet });
    const checkpoint = path.join(dir, 'b.ckpt');
    assert.equal(await pretrainStandIn({ shape, settings, tokens, bos: 1, checkpoint, threads: 1, log: quiet, stopAtStep: 60 }), null);
    assert.ok(fs.existsSync(checkpoint), 'the stop left a checkpoint');
    const lines: string[] = [];
    const resumed = await pretrainStandIn({ shape, settings, tokens, bos: 1, checkpoint, threads: 1, log: (l) => lines.push(l) });
    assert.ok(lines[0]!.includes('resuming') && lines[0]!.includes('step 60 of 99'), lines[0]);
    assert.ok(whole !== null && resumed !== null);
    assert.equal(whole.steps, 99);
    for (const [name, w] of whole.weights) assert.deepEqual(resumed.weights.get(name), w, name);
    assert.deepEqual(resumed.curve.map((p) => p.step), [99]);
    assert.ok(Number.isFinite(resumed.curve[0]!.validationLoss) && resumed.curve[0]!.validationLoss < Math.log(64), `it learned the pattern: validation ${resumed.curve[0]!.validationLoss}, train ${resumed.curve[0]!.trainLoss}`);
  });
});
