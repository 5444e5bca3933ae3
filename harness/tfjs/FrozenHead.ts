import { tf } from './tf';

/** Rows of the head per matmul chunk: bounds the [tokens, chunk] logits (wasm heap ~4 GiB). */
export const HEAD_CHUNK_ROWS = 8192;

/**
 * The backbone's frozen final norm and head, on the server:
 *   z = rmsnorm(y) * normWeight;  logits = z W^T;  loss = CE(logits, target)
 * The vocabulary is processed in chunks with an online log-sum-exp, so no
 * [tokens, vocabulary] tensor is ever built, and the gradient with respect to
 * y is accumulated in the same pass (explicit transposes: wasm runs
 * transposed matmuls up to 14x slower).
 */
export class FrozenHead {
  readonly vocab: number;
  readonly d: number;
  private readonly norm: tf.Tensor1D; // [d]
  private readonly chunks: tf.Tensor2D[] = []; // W_c [C, d]
  private readonly chunksT: tf.Tensor2D[] = []; // W_c^T [d, C]

  /** head: [vocab][d] float32 row-major; normWeight: [d]. */
  constructor(private readonly head: Float32Array, normWeight: Float32Array, readonly eps: number, chunkRows = HEAD_CHUNK_ROWS) {
    this.d = normWeight.length;
    this.vocab = head.length / this.d;
    this.norm = tf.tensor1d(normWeight);
    for (let start = 0; start < this.vocab; start += chunkRows) {
      const rows = Math.min(chunkRows, this.vocab - start);
      const w = tf.tensor2d(head.subarray(start * this.d, (start + rows) * this.d), [rows, this.d]);
      this.chunks.push(w);
      this.chunksT.push(tf.tidy(() => w.transpose() as tf.Tensor2D));
    }
  }

  /** Rows of the head for the given token ids: [n, d]. */
  private gatherRows(targets: Int32Array): tf.Tensor2D {
    const out = new Float32Array(targets.length * this.d);
    for (let i = 0; i < targets.length; i++) out.set(this.head.subarray(targets[i]! * this.d, (targets[i]! + 1) * this.d), i * this.d);
    return tf.tensor2d(out, [targets.length, this.d]);
  }

  /**
   * Per-token cross-entropy for hidden states y [n, d] (the last layer's
   * output plus the side network's delta). With `weights` [n] (loss weight per
   * token), also returns dL/dy for L = sum(weights * loss).
   */
  lossAndGrad(y: tf.Tensor2D, targets: Int32Array, weights?: tf.Tensor1D): { loss: tf.Tensor1D; dy?: tf.Tensor2D } {
    return tf.tidy(() => {
      const n = y.shape[0];
      const ms = y.square().mean(1, true); // [n,1]
      const inv = ms.add(this.eps).rsqrt(); // [n,1]
      const xhat = y.mul(inv); // [n,d]
      const z = xhat.mul(this.norm) as tf.Tensor2D; // [n,d]
      let m: tf.Tensor = tf.fill([n, 1], -Infinity);
      let s: tf.Tensor = tf.zeros([n, 1]);
      let acc: tf.Tensor | undefined = weights ? tf.zeros([n, this.d]) : undefined;
      for (let c = 0; c < this.chunks.length; c++) {
        const step = tf.tidy(() => {
          const logits = tf.matMul(z, this.chunksT[c]!); // [n,C]
          const mNew = tf.maximum(m, logits.max(1, true));
          const scaleOld = m.sub(mNew).exp();
          const e = logits.sub(mNew).exp(); // [n,C]
          const sNew = s.mul(scaleOld).add(e.sum(1, true));
          const accNew = acc ? acc.mul(scaleOld).add(tf.matMul(e, this.chunks[c]!)) : undefined;
          return { mNew, sNew, accNew };
        });
        m.dispose();
        s.dispose();
        acc?.dispose();
        m = step.mNew;
        s = step.sNew;
        acc = step.accNew;
      }
      const wt = this.gatherRows(targets); // [n,d]
      const targetLogit = z.mul(wt).sum(1); // [n]
      const loss = m.squeeze([1]).add(s.log().squeeze([1])).sub(targetLogit) as tf.Tensor1D;
      if (!weights || !acc) return { loss };
      // dL/dz = w * (softmax W - W[target]); then back through the RMSNorm.
      const dz = acc.div(s).sub(wt).mul(weights.expandDims(1)); // [n,d]
      const dn = dz.mul(this.norm); // d/d xhat
      const dy = inv.mul(dn.sub(xhat.mul(dn.mul(xhat).mean(1, true)))) as tf.Tensor2D;
      return { loss, dy };
    });
  }

  dispose(): void {
    this.norm.dispose();
    for (const t of [...this.chunks, ...this.chunksT]) t.dispose();
  }
}
