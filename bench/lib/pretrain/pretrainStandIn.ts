/**
 * One pretraining run of the stand-in over a tokenized corpus (issue 37),
 * resumable: the corpus is cut into windows of `window` tokens (each starts
 * with BOS and predicts every one of its tokens once), every 100th window is
 * held out for validation, the rest are shuffled by the seed and taken
 * `batch` at a time for one epoch. A checkpoint is written every
 * CHECKPOINT_STEPS steps; a run that finds one goes on from it.
 */
import * as fs from 'node:fs';
import { learningRate, PretrainSettings, Pretrainer } from './Pretrainer';
import { PretrainShape } from './pretrainGraph';
import { SeededRandom } from '../../../common/SeededRandom';

/** Steps between checkpoints (about a minute and a half of the 6 x 384 stand-in on 2 cores). */
export const CHECKPOINT_STEPS = 25;
/** Steps between validation losses. */
const VALIDATE_STEPS = 100;
/** Every VALIDATION_STRIDE-th window is held out. */
const VALIDATION_STRIDE = 100;
/** Validation batches scored each time (the same ones every time). */
const VALIDATION_BATCHES = 2;

/** One point of the pretraining curve. */
export interface PretrainPoint {
  step: number;
  tokens: number;
  /** Mean training loss of the steps since the last point. */
  trainLoss: number;
  validationLoss: number;
  lr: number;
  seconds: number;
}

export interface PretrainRun {
  weights: Map<string, Float32Array>;
  /** Seconds of pretraining, summed over every resumed part. */
  seconds: number;
  steps: number;
  tokens: number;
  curve: PretrainPoint[];
}

export interface PretrainStandInOptions {
  shape: PretrainShape;
  settings: PretrainSettings;
  /** The tokenized corpus (no BOS). */
  tokens: Int32Array;
  bos: number;
  /** The checkpoint file (read if it exists, written as the run goes, removed at the end). */
  checkpoint: string;
  threads: number;
  log: (line: string) => void;
  /** Stop (with a checkpoint) once this many steps are done, to build in parts. Default: the whole epoch. */
  stopAtStep?: number;
}

/** The batch of windows `windows` as the graph's inputs: ids [B, T] (BOS, then the window's tokens but its last), targets [B * T]. */
export function windowBatch(tokens: Int32Array, windows: number[], window: number, bos: number): { ids: BigInt64Array; targets: BigInt64Array } {
  const ids = new BigInt64Array(windows.length * window);
  const targets = new BigInt64Array(windows.length * window);
  windows.forEach((w, b) => {
    for (let t = 0; t < window; t++) {
      ids[b * window + t] = BigInt(t === 0 ? bos : tokens[w * window + t - 1]!);
      targets[b * window + t] = BigInt(tokens[w * window + t]!);
    }
  });
  return { ids, targets };
}

/** Pretrains for one epoch, or until `stopAtStep` (then null: the checkpoint holds the run). */
export async function pretrainStandIn(o: PretrainStandInOptions): Promise<PretrainRun | null> {
  const { batch: B, window: T } = o.settings;
  const count = Math.floor(o.tokens.length / T);
  const all = Array.from({ length: count }, (_, w) => w);
  const heldOut = all.filter((w) => w % VALIDATION_STRIDE === VALIDATION_STRIDE - 1);
  const held = new Set(heldOut);
  // Whole batches only (the graph's batch size is fixed); none on a corpus under VALIDATION_STRIDE windows.
  const validation = heldOut.slice(0, Math.min(VALIDATION_BATCHES, Math.floor(heldOut.length / B)) * B);
  const order = new SeededRandom(o.settings.seed).shuffle(all.filter((w) => !held.has(w)));
  const total = Math.floor(order.length / B);
  const trainer = await Pretrainer.create(o.shape, o.settings, o.threads);
  try {
    let seconds = 0;
    let curve: PretrainPoint[] = [];
    if (fs.existsSync(o.checkpoint)) {
      const extra = trainer.restore(o.checkpoint) as { seconds: number; curve: PretrainPoint[] };
      seconds = extra.seconds;
      curve = extra.curve;
      o.log(`resuming the stand-in's pretraining at step ${trainer.step} of ${total} (${(seconds / 60).toFixed(0)} min so far)`);
    } else o.log(`pretraining the stand-in: ${total} steps of ${B} x ${T} tokens (${((total * B * T) / 1e6).toFixed(2)}M tokens), ${validation.length} validation windows`);
    const validate = async (): Promise<number> => {
      let sum = 0;
      for (let i = 0; i < validation.length; i += B) {
        const { ids, targets } = windowBatch(o.tokens, validation.slice(i, i + B), T, o.bos);
        sum += await trainer.loss(ids, targets);
      }
      return validation.length === 0 ? NaN : sum / (validation.length / B);
    };
    let lossSum = 0;
    let lossCount = 0;
    let started = Date.now();
    /** Adds the time since the last lap to `seconds`. */
    const lap = (): void => {
      seconds += (Date.now() - started) / 1000;
      started = Date.now();
    };
    while (trainer.step < total) {
      const s = trainer.step;
      const lr = learningRate(o.settings, s, total);
      const { ids, targets } = windowBatch(o.tokens, order.slice(s * B, s * B + B), T, o.bos);
      const r = await trainer.trainStep(ids, targets, lr);
      if (!Number.isFinite(r.loss)) throw new RangeError(`the pretraining loss is not finite at step ${s}`);
      lossSum += r.loss;
      lossCount++;
      const done = trainer.step;
      if (done % VALIDATE_STEPS === 0 || done === total) {
        lap();
        const point = { step: done, tokens: done * B * T, trainLoss: lossSum / lossCount, validationLoss: await validate(), lr, seconds };
        curve.push(point);
        lossSum = 0;
        lossCount = 0;
        const rate = (done * B * T) / seconds;
        o.log(`step ${done}/${total}: train ${point.trainLoss.toFixed(4)}, validation ${point.validationLoss.toFixed(4)}, lr ${lr.toExponential(2)}, ${rate.toFixed(0)} tokens/s over the run, about ${(((total - done) * B * T) / rate / 60).toFixed(0)} min left`);
      }
      if ((done % CHECKPOINT_STEPS === 0 || done === o.stopAtStep) && done < total) {
        lap();
        trainer.save(o.checkpoint, { seconds, curve });
        if (done === o.stopAtStep) {
          o.log(`stopped at step ${done} of ${total}: the next run goes on from ${o.checkpoint}`);
          return null;
        }
      }
    }
    lap();
    return { weights: trainer.params, seconds, steps: total, tokens: total * B * T, curve };
  } finally {
    await trainer.dispose();
  }
}
