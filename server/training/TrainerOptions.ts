export type { TrainerOptions } from '../../common/learningRate';
export { learningRateAt } from '../../common/learningRate';

export interface OptimizerState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}
