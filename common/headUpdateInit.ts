import { SeededRandom } from './SeededRandom';

/** What the job's seed is mixed with for the head update's own draws (so the device can draw them without the side network's). */
const HEAD_SEED_SALT = 0x68ead5a1;

/**
 * The head update's start for a job's seed: A [d][rank] random (normal, std
 * 1/sqrt(d)), B [vocab][rank] zero, so step 0 is the backbone's own head. The
 * server draws it for a standard-mode job, the device for a label-private one
 * (where A and B never leave it): the same values either way.
 */
export function initialHeadUpdate(d: number, vocab: number, rank: number, seed: number): { a: Float32Array; b: Float32Array } {
  const rng = new SeededRandom((seed ^ HEAD_SEED_SALT) >>> 0);
  const a = new Float32Array(d * rank);
  const std = 1 / Math.sqrt(d);
  for (let i = 0; i < a.length; i++) a[i] = rng.normal() * std;
  return { a, b: new Float32Array(vocab * rank) };
}
