/** The optimizer's schedule and constants, shared by the server's side network and the device's head update (label-private). */

/** Options of the optimizer and learning-rate schedule. */
export interface TrainerOptions {
  /** Peak learning rate. */
  learningRate: number;
  /** Linear warm-up steps. */
  warmupSteps: number;
  /** Steps of the whole job (the cosine decays over them). */
  totalSteps: number;
  /** Global gradient-norm clip. Default 1. */
  clipNorm?: number;
  /** Adam betas and epsilon. Defaults 0.9, 0.999, 1e-8. */
  beta1?: number;
  beta2?: number;
  epsilon?: number;
  /** The cosine ends at this fraction of the peak. Default 0.1. */
  minLearningRateFraction?: number;
}

/** Adam's constants and the clip norm of one parameter group. */
export interface StepConstants {
  clipNorm: number;
  beta1: number;
  beta2: number;
  epsilon: number;
}

export function stepConstants(o: Pick<TrainerOptions, 'clipNorm' | 'beta1' | 'beta2' | 'epsilon'>): StepConstants {
  return { clipNorm: o.clipNorm ?? 1, beta1: o.beta1 ?? 0.9, beta2: o.beta2 ?? 0.999, epsilon: o.epsilon ?? 1e-8 };
}

/** Warm-up, then cosine decay to minLearningRateFraction of the peak. `step` counts from 0. */
export function learningRateAt(step: number, o: TrainerOptions): number {
  const warm = Math.min(1, (step + 1) / Math.max(1, o.warmupSteps));
  const progress = Math.min(1, Math.max(0, (step - o.warmupSteps) / Math.max(1, o.totalSteps - o.warmupSteps)));
  const floor = o.minLearningRateFraction ?? 0.1;
  return o.learningRate * warm * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}
