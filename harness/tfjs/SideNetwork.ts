// The TensorFlow.js side network: the reference the ONNX engine is checked
// against (forward, hand-written backward, autodiff), and the engine the
// server benchmark compares with. Not part of the product.
import type { SideNetworkShape } from '../../common/AdapterConfig';
import { ADAPTER_NORM_EPS, attentionHeadsOf, GATE_TEMPERATURE, hasAttention, parameterNames, parameterShape, ropeTables } from '../../server/training/sideNetworkSpec';
import { ServerError } from '../../server/ServerError';
import { FrozenHead } from './FrozenHead';
import { tf } from './tf';

const GELU_C = Math.sqrt(2 / Math.PI);

// x*x*x rather than pow(x, 3): pow is several times slower on the wasm backend.
function gelu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => x.mul(0.5).mul(x.add(x.square().mul(x).mul(0.044715)).mul(GELU_C).tanh().add(1)));
}

/** x / rms(x) per row, with the adapters' epsilon. */
function unitRms(x: tf.Tensor2D): tf.Tensor2D {
  return x.mul(x.square().mean(1, true).add(ADAPTER_NORM_EPS).rsqrt()) as tf.Tensor2D;
}

function geluGrad(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const t = x.add(x.square().mul(x).mul(0.044715)).mul(GELU_C).tanh();
    const dt = tf.scalar(1).sub(t.square()).mul(x.square().mul(3 * 0.044715).add(1).mul(GELU_C));
    return t.add(1).mul(0.5).add(x.mul(0.5).mul(dt));
  });
}

/**
 * The side network of the architecture spec (a gated ladder of bottleneck
 * adapters over the tapped layers, zero-initialised output projection), with a
 * hand-written backward pass that uses only plain matmuls. `referenceLoss` is
 * the same computation as a pure forward, for checking gradients against
 * TensorFlow.js autodiff.
 */
export class SideNetwork {
  readonly params = new Map<string, tf.Variable>();

  constructor(readonly shape: SideNetworkShape, values: Map<string, Float32Array>) {
    for (const name of parameterNames(shape)) {
      const v = values.get(name);
      if (!v) throw new ServerError('BAD_PARAMETER', `missing parameter ${name}`);
      this.params.set(name, tf.variable(tf.tensor(v, parameterShape(shape, name)), true, `side/${name}/${Math.random()}`));
    }
  }

  p(name: string): tf.Variable {
    return this.params.get(name)!;
  }

  /**
   * delta [n, d] for the tapped layers' outputs hs[k] [n, d] (pure forward,
   * differentiable). A version-2 network attends within each sequence of
   * `lengths` (rows concatenated in order), one sequence at a time: no
   * padding, unlike the ONNX graphs it checks.
   */
  delta(hs: tf.Tensor2D[], lengths?: number[]): tf.Tensor2D {
    return tf.tidy((): tf.Tensor2D => {
      let s: tf.Tensor = tf.zeros([hs[0]!.shape[0], this.shape.r]);
      const v2 = this.shape.sideNetwork === 2;
      hs.forEach((h, k) => {
        const a = tf.matMul(v2 ? unitRms(h) : h, this.p(`down.${k}`));
        const mu = this.p(`alpha.${k}`).div(GATE_TEMPERATURE).sigmoid();
        let x = tf.scalar(1).sub(mu).mul(a).add(mu.mul(s)) as tf.Tensor2D;
        if (hasAttention(this.shape, k)) x = x.add(tf.matMul(this.attention(x, k, lengths ?? [x.shape[0]]), this.p(`wo.${k}`)));
        const n = unitRms(x);
        s = x.add(tf.matMul(gelu(tf.matMul(n, this.p(`mid.${k}`))) as tf.Tensor2D, this.p(`up.${k}`)));
      });
      const out: tf.Tensor2D = tf.matMul(s as tf.Tensor2D, this.p('out') as tf.Tensor2D);
      if (!v2 || this.shape.joinAfterNorm) return out;
      const last = hs[hs.length - 1]!;
      return out.mul(last.square().mean(1, true).add(ADAPTER_NORM_EPS).sqrt()) as tf.Tensor2D;
    });
  }

  /** Causal multi-head self-attention with RoPE of block k, per sequence: [n, r] -> [n, r] (heads joined, before Wo). */
  private attention(x: tf.Tensor2D, k: number, lengths: number[]): tf.Tensor2D {
    const { attentionHeads: heads, width } = attentionHeadsOf(this.shape);
    const n = unitRms(x);
    const [Q, K, V] = ['wq', 'wk', 'wv'].map((w) => tf.matMul(n, this.p(`${w}.${k}`) as tf.Tensor2D) as tf.Tensor2D);
    const outs: tf.Tensor2D[] = [];
    let at = 0;
    for (const L of lengths) {
      const split = (t: tf.Tensor2D): tf.Tensor3D => t.slice([at, 0], [L, this.shape.r]).reshape([L, heads, width]).transpose([1, 0, 2]);
      const { cos, sin } = ropeTables(L, width);
      const c = tf.tensor2d(cos, [L, width / 2]);
      const sn = tf.tensor2d(sin, [L, width / 2]);
      const rope = (t: tf.Tensor3D): tf.Tensor3D => {
        const [t1, t2] = tf.split(t, 2, 2);
        return tf.concat([t1!.mul(c).sub(t2!.mul(sn)), t2!.mul(c).add(t1!.mul(sn))], 2) as tf.Tensor3D;
      };
      const mask = tf.tensor2d(Float32Array.from({ length: L * L }, (_, i) => (i % L > Math.floor(i / L) ? -1e9 : 0)), [L, L]);
      const scores = tf.matMul(rope(split(Q!)), rope(split(K!)), false, true).div(Math.sqrt(width)).add(mask) as tf.Tensor3D;
      const o = tf.matMul(tf.softmax(scores), split(V!)); // [H, L, e]
      outs.push(o.transpose([1, 0, 2]).reshape([L, this.shape.r]) as tf.Tensor2D);
      at += L;
    }
    return tf.concat(outs, 0);
  }

  /** Mean masked loss through a full (unchunked) head, as a pure forward: the autodiff reference. */
  referenceLoss(hs: tf.Tensor2D[], targets: Int32Array, mask: Float32Array, head: Float32Array, normWeight: Float32Array, eps: number, lengths?: number[]): tf.Scalar {
    return tf.tidy(() => {
      const h = hs[hs.length - 1]!;
      const delta = this.delta(hs, lengths);
      const norm = (y: tf.Tensor2D): tf.Tensor2D => y.mul(y.square().mean(1, true).add(eps).rsqrt()).mul(tf.tensor1d(normWeight));
      const z = this.shape.joinAfterNorm ? norm(h).add(delta) : norm(h.add(delta));
      const W = tf.tensor2d(head, [head.length / this.shape.d, this.shape.d]);
      const logits = tf.matMul(z as tf.Tensor2D, W, false, true);
      const logp = tf.logSoftmax(logits);
      const picked = logp.mul(tf.oneHot(tf.tensor1d(targets, 'int32'), W.shape[0])).sum(1);
      const m = tf.tensor1d(mask);
      return picked.mul(m).sum().neg().div(m.sum()) as tf.Scalar;
    });
  }

  /**
   * Loss sum over masked tokens, and (when `train`) gradients of the mean
   * masked loss with respect to every parameter.
   */
  lossAndGrads(hs: tf.Tensor2D[], targets: Int32Array, mask: Float32Array, head: FrozenHead, train: boolean): { lossSum: number; tokens: number; grads?: Map<string, tf.Tensor> } {
    const tokens = mask.reduce((a, b) => a + b, 0);
    const K = hs.length;
    const keep: tf.Tensor[] = [];
    const track = <T extends tf.Tensor>(t: T): T => {
      keep.push(t);
      return t;
    };
    try {
      // Forward, keeping what the backward pass needs.
      const cache: { a: tf.Tensor2D; sPrev: tf.Tensor2D; x: tf.Tensor2D; n: tf.Tensor2D; inv: tf.Tensor; pre: tf.Tensor2D; g: tf.Tensor2D; mu: tf.Tensor }[] = [];
      let s = track(tf.zeros([hs[0]!.shape[0], this.shape.r]) as tf.Tensor2D);
      for (let k = 0; k < K; k++) {
        const a = track(tf.matMul(hs[k]!, this.p(`down.${k}`)) as tf.Tensor2D);
        const mu = track(tf.tidy(() => this.p(`alpha.${k}`).div(GATE_TEMPERATURE).sigmoid()));
        const x = track(tf.tidy(() => tf.scalar(1).sub(mu).mul(a).add(mu.mul(s))) as tf.Tensor2D);
        const inv = track(tf.tidy(() => x.square().mean(1, true).add(ADAPTER_NORM_EPS).rsqrt()));
        const n = track(x.mul(inv) as tf.Tensor2D);
        const pre = track(tf.matMul(n, this.p(`mid.${k}`)) as tf.Tensor2D);
        const g = track(gelu(pre) as tf.Tensor2D);
        const sNext = track(tf.tidy(() => x.add(tf.matMul(g, this.p(`up.${k}`)))) as tf.Tensor2D);
        cache.push({ a, sPrev: s, x, n, inv, pre, g, mu });
        s = sNext;
      }
      const y = track(tf.tidy(() => hs[K - 1]!.add(tf.matMul(s, this.p('out')))) as tf.Tensor2D);
      const weights = train && tokens > 0 ? track(tf.tidy(() => tf.tensor1d(mask).div(tokens)) as tf.Tensor1D) : undefined;
      const { loss, dy } = head.lossAndGrad(y, targets, weights);
      track(loss);
      if (dy) track(dy);
      const lossSum = tf.tidy(() => loss.mul(tf.tensor1d(mask)).sum().dataSync()[0]!);
      if (!train || !dy) return { lossSum, tokens };

      // Backward (explicit transposes; see FrozenHead).
      const grads = new Map<string, tf.Tensor>();
      grads.set('out', tf.tidy(() => tf.matMul(s.transpose(), dy)));
      let ds = track(tf.tidy(() => tf.matMul(dy, this.p('out').transpose() as tf.Tensor2D)));
      for (let k = K - 1; k >= 0; k--) {
        const c = cache[k]!;
        const step = tf.tidy(() => {
          const du = ds;
          const dUp = tf.matMul(c.g.transpose(), du);
          const dpre = tf.matMul(du, this.p(`up.${k}`).transpose() as tf.Tensor2D).mul(geluGrad(c.pre)) as tf.Tensor2D;
          const dMid = tf.matMul(c.n.transpose(), dpre);
          const dn = tf.matMul(dpre, this.p(`mid.${k}`).transpose() as tf.Tensor2D);
          const dx = ds.add(c.inv.mul(dn.sub(c.n.mul(dn.mul(c.n).mean(1, true))))) as tf.Tensor2D;
          const da = tf.scalar(1).sub(c.mu).mul(dx) as tf.Tensor2D;
          const dsPrev = c.mu.mul(dx) as tf.Tensor2D;
          const dmu = dx.mul(c.sPrev.sub(c.a)).sum();
          const dAlpha = dmu.mul(c.mu.mul(tf.scalar(1).sub(c.mu))).div(GATE_TEMPERATURE).reshape([1]);
          // (da^T h)^T: transposes the small [n, r] and [r, d] tensors, not h [n, d].
          const dDown = tf.matMul(da.transpose(), hs[k]!).transpose();
          return { dUp, dMid, dAlpha, dDown, dsPrev };
        });
        grads.set(`up.${k}`, step.dUp);
        grads.set(`mid.${k}`, step.dMid);
        grads.set(`alpha.${k}`, step.dAlpha);
        grads.set(`down.${k}`, step.dDown);
        ds = track(step.dsPrev);
      }
      return { lossSum, tokens, grads };
    } finally {
      for (const t of keep) t.dispose();
    }
  }

  /** Current parameter values (for checkpoints and the adapter file). */
  async values(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of this.params) out.set(name, (await v.data()) as Float32Array);
    return out;
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
  }
}
