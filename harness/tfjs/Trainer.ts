import { ActivationBatch } from '../../common/batchPayload';
import { learningRateAt, OptimizerState, TrainerOptions } from '../../server/training/TrainerOptions';
import { FrozenHead } from './FrozenHead';
import { SideNetwork } from './SideNetwork';
import { tf } from './tf';

/** Adam with global-norm clipping over a SideNetwork, with a frozen head (TensorFlow.js reference). */
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
