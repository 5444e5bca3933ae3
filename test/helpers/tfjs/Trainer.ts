import { ActivationBatch } from '../../common/batchPayload';
import { FrozenHead } from './FrozenHead';
import { SideNetwork } from './SideNetwork';
import { tf } from './tf';

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

/** Warm-up, then cosine decay to minLearningRateFraction of the peak. `step` counts from 0. */
export function learningRateAt(step: number, o: TrainerOptions): number {
  const warm = Math.min(1, (step + 1) / Math.max(1, o.warmupSteps));
  const progress = Math.min(1, Math.max(0, (step - o.warmupSteps) / Math.max(1, o.totalSteps - o.warmupSteps)));
  const floor = o.minLearningRateFraction ?? 0.1;
  return o.learningRate * warm * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

export interface OptimizerState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

/** Adam with global-norm clipping over a SideNetwork, with a frozen head. */
export class Trainer {
  step: number;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();

  constructor(readonly net: SideNetwork, readonly head: FrozenHead, readonly options: TrainerOptions, state?: OptimizerState) {
    this.step = state?.step ?? 0;
    for (const [name, p] of net.params) {
      const init = (src?: Float32Array): tf.Variable => tf.variable(src ? tf.tensor(src, p.shape) : tf.zerosLike(p), false);
      this.m.set(name, init(state?.m.get(name)));
      this.v.set(name, init(state?.v.get(name)));
    }
  }

  private tensors(batch: ActivationBatch): tf.Tensor2D[] {
    const d = this.net.shape.d;
    return batch.layers.map((l) => tf.tensor2d(l, [batch.rows, d]));
  }

  /** One optimizer step on a batch; returns the batch's mean masked loss (before the step). */
  trainBatch(batch: ActivationBatch): { loss: number; learningRate: number; step: number; tokens: number } {
    const hs = this.tensors(batch);
    try {
      const mask = Float32Array.from(batch.mask);
      const { lossSum, tokens, grads } = this.net.lossAndGrads(hs, batch.targets, mask, this.head, true);
      const lr = learningRateAt(this.step, this.options);
      if (grads) {
        this.apply(grads, lr);
        for (const g of grads.values()) g.dispose();
      }
      this.step += 1;
      return { loss: tokens > 0 ? lossSum / tokens : 0, learningRate: lr, step: this.step, tokens };
    } finally {
      for (const h of hs) h.dispose();
    }
  }

  /** Held-out evaluation with the current weights (no update). */
  evalBatch(batch: ActivationBatch): { lossSum: number; tokens: number } {
    const hs = this.tensors(batch);
    try {
      const { lossSum, tokens } = this.net.lossAndGrads(hs, batch.targets, Float32Array.from(batch.mask), this.head, false);
      return { lossSum, tokens };
    } finally {
      for (const h of hs) h.dispose();
    }
  }

  private apply(grads: Map<string, tf.Tensor>, lr: number): void {
    const b1 = this.options.beta1 ?? 0.9;
    const b2 = this.options.beta2 ?? 0.999;
    const eps = this.options.epsilon ?? 1e-8;
    const clip = this.options.clipNorm ?? 1;
    tf.tidy(() => {
      const sq = [...grads.values()].map((g) => g.square().sum());
      const norm = tf.addN(sq).sqrt();
      const scale = tf.minimum(tf.scalar(1), tf.scalar(clip).div(norm.add(1e-12)));
      const t = this.step + 1;
      const c1 = 1 - b1 ** t;
      const c2 = 1 - b2 ** t;
      for (const [name, p] of this.net.params) {
        const g = grads.get(name)!.mul(scale);
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        m.assign(m.mul(b1).add(g.mul(1 - b1)));
        v.assign(v.mul(b2).add(g.square().mul(1 - b2)));
        p.assign(p.sub(m.div(c1).div(v.div(c2).sqrt().add(eps)).mul(lr)));
      }
    });
  }

  async exportState(): Promise<OptimizerState> {
    const read = async (src: Map<string, tf.Variable>): Promise<Map<string, Float32Array>> => {
      const out = new Map<string, Float32Array>();
      for (const [k, t] of src) out.set(k, (await t.data()) as Float32Array);
      return out;
    };
    return { step: this.step, m: await read(this.m), v: await read(this.v) };
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}
