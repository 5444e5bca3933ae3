import type { JobConfig } from '../../../common/messages';
import { MobiError } from '../MobiError';
import type { ResolvedFineTuneOptions } from './FineTuneOptions';

/** Layers skip..L-1, every `every`-th counting down from the last (which is always tapped). */
export function tappedLayers(L: number, skip: number, every: number): number[] {
  const out: number[] = [];
  for (let layer = L - 1; layer >= skip; layer -= every) out.unshift(layer);
  return out;
}

/**
 * A new job's config on a model of `L` layers whose data makes
 * `batchesPerEpoch` batches: from the options, or for an update from its
 * adapter's own config (`update`: the side network's shape, layers, bits and
 * sequences) with this job's steps, learning rate and checkpoints.
 */
export function newJobConfig(o: ResolvedFineTuneOptions, L: number, batchesPerEpoch: number, update?: JobConfig): JobConfig {
  if (o.skipLayers < 0 || o.skipLayers >= L) throw new MobiError('BAD_ARGUMENT', `skipLayers must be between 0 and ${L - 1}.`);
  const totalSteps = o.steps ?? o.epochs * batchesPerEpoch;
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new MobiError('BAD_ARGUMENT', 'The number of steps must be a positive integer.');
  const warmupSteps = Math.max(1, Math.min(20, Math.floor(totalSteps / 10)));
  const schedule = { totalSteps, warmupSteps, learningRate: o.learningRate, checkpointEvery: o.checkpointEvery };
  if (update) return { ...update, ...schedule };
  return {
    tappedLayers: tappedLayers(L, o.skipLayers, o.tapEvery), reduction: o.reduction, bits: o.bits, seqLen: o.seqLen, batchSize: o.batchSize, seed: o.seed, ...schedule,
    ...(o.labelPrivate ? { labelPrivate: true } : {}),
    ...(o.sideNetwork === 2 ? { sideNetwork: 2 } : {}),
    ...(o.joinAfterNorm ? { joinAfterNorm: true } : {}),
    ...(o.headRank > 0 ? { headRank: o.headRank } : {}),
  };
}
