import type { SideNetworkShape } from '../../../common/AdapterConfig';
import type { OptimizerState } from '../TrainerOptions';
import type { StepConstants } from './sideGraphs';

/**
 * The head update of rank k beside the side network (shape.headRank): the
 * logits become W z + B (A^T z), A = head_a [d, k], B = head_b [vocab, k]
 * (row v for vocabulary entry v). The ONNX chunk graphs take B's rows of each
 * chunk and u = z A; everything else is small and done here:
 *
 *   the target rows the loss graph reads:   W_t + A B_t             [n, d]
 *   the softmax rows the step graph reads:  acc + acc_b A^T          [n, d]
 *     (acc_b = sum_v e_v B_v, so dz = w (acc/s - W_t) + du A^T with
 *      du = w (acc_b/s - B_t), and the side network's graphs need no change)
 *   the gradients:  dA = z^T du,   dB = sum of the chunks' softmax part - w_t u_t at row t
 *
 * A and B are clipped as their own group (at the trainer's clip norm) and
 * stepped by Adam with the side network's learning rate and bias corrections.
 */
export class HeadUpdate {
  readonly rank: number;
  private readonly d: number;

  constructor(shape: SideNetworkShape) {
    this.rank = shape.headRank ?? 0;
    this.d = shape.d;
  }

  /** u = z A: [n, k]. */
  project(z: Float32Array, a: Float32Array): Float32Array {
    const { d, rank: k } = this;
    const n = z.length / d;
    const u = new Float32Array(n * k);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < d; c++) {
        const zc = z[i * d + c]!;
        if (zc === 0) continue;
        for (let j = 0; j < k; j++) u[i * k + j]! += zc * a[c * k + j]!;
      }
    }
    return u;
  }

  /** x + y A^T for y [n, k]: [n, d] (the target rows with B_t, the softmax rows with acc_b). */
  addLifted(x: Float32Array, y: Float32Array, a: Float32Array): Float32Array {
    const { d, rank: k } = this;
    const out = Float32Array.from(x);
    const n = x.length / d;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < d; c++) {
        let sum = 0;
        for (let j = 0; j < k; j++) sum += y[i * k + j]! * a[c * k + j]!;
        out[i * d + c]! += sum;
      }
    }
    return out;
  }

  /** B's rows of the targets: [n, k]. */
  targetRows(b: Float32Array, targets: Int32Array): Float32Array {
    const k = this.rank;
    const out = new Float32Array(targets.length * k);
    targets.forEach((t, i) => out.set(b.subarray(t * k, (t + 1) * k), i * k));
    return out;
  }

  /**
   * dA [d, k] from z, acc_b, s, B's target rows and the token weights w; and,
   * given dB's softmax part (summed over the chunks), dB with the targets' part.
   */
  gradients(z: Float32Array, u: Float32Array, accB: Float32Array, s: Float32Array, bTargets: Float32Array, targets: Int32Array, weights: Float32Array, softmaxPartB: Float32Array): { a: Float32Array; b: Float32Array } {
    const { d, rank: k } = this;
    const n = weights.length;
    const dA = new Float32Array(d * k);
    const dB = softmaxPartB;
    for (let i = 0; i < n; i++) {
      const w = weights[i]!;
      if (w === 0) continue;
      const du = new Float32Array(k);
      for (let j = 0; j < k; j++) du[j] = w * (accB[i * k + j]! / s[i]! - bTargets[i * k + j]!);
      for (let c = 0; c < d; c++) {
        const zc = z[i * d + c]!;
        for (let j = 0; j < k; j++) dA[c * k + j]! += zc * du[j]!;
      }
      const t = targets[i]!;
      for (let j = 0; j < k; j++) dB[t * k + j]! -= w * u[i * k + j]!;
    }
    return { a: dA, b: dB };
  }

  /**
   * Clips {dA, dB} to the side network's clip norm as one group and steps A
   * and B by Adam with the side network's constants at learning rate `lr`
   * (step t counts from 1), in place in `params`, `state.m` and `state.v`.
   * False (nothing changed) when a gradient is not finite.
   */
  static adam(grads: Map<string, Float32Array>, params: Map<string, Float32Array>, state: Pick<OptimizerState, 'm' | 'v'>, lr: number, t: number, c: StepConstants): boolean {
    let sq = 0;
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
    if (!Number.isFinite(sq)) return false;
    const scale = Math.min(1, c.clipNorm / (Math.sqrt(sq) + 1e-12));
    const { beta1: b1, beta2: b2, epsilon: eps } = c;
    const c1 = 1 - b1 ** t;
    const c2 = 1 - b2 ** t;
    for (const [name, g] of grads) {
      const p = params.get(name)!;
      const m = state.m.get(name)!;
      const v = state.v.get(name)!;
      for (let i = 0; i < g.length; i++) {
        const gi = g[i]! * scale;
        m[i] = b1 * m[i]! + (1 - b1) * gi;
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
        p[i]! -= (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + eps);
      }
    }
    return true;
  }
}
