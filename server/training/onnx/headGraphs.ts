import { GraphBuilder } from './GraphBuilder';

/**
 * The frozen head's graphs, one chunk of the vocabulary at a time (the
 * trainer walks the chunks; see ./sideGraphs.ts for the side network's):
 *
 *   headChunk     z, W_c (f16), running max m, sum s (and acc) -> the same,
 *                 updated: the online log-sum-exp over one chunk, so no
 *                 [tokens, vocabulary] tensor exists (acc = sum_v softmax-weight W_v).
 *                 A model with a soft cap c (gemma2) caps z W_c^T to c tanh(z W_c^T / c),
 *                 and acc weighs each row by the cap's slope too.
 *                 With a head update of rank k (headRank), the chunk also takes
 *                 B_c [c, k] and u = z A [n, k]: logits = z W_c^T + u B_c^T, and
 *                 to train also acc_b = sum_v softmax-weight B_v, and the chunk's
 *                 e = exp(l - m) as float16 [n, c] (kept for B's gradient)
 *   headChunkGrad a chunk's kept e (float16), f u [n, k] -> dB_c = e^T (f u) [c, k]: the
 *                 softmax part of B's gradient, where the trainer's per-token
 *                 f = weight exp(m_chunk - m) / s turns e into the final
 *                 softmax (and adds the targets' part). No logits are computed
 *                 twice; e in float16 keeps about three digits of each weight.
 */

/**
 * One chunk's logits [n, c]: z W_c^T, soft-capped to cap tanh(z W_c^T / cap)
 * where the model caps them (cap > 0; `slope` is then the cap's derivative
 * 1 - tanh^2 [n, c]), plus u B_c^T with a head update of rank k > 0 (inputs
 * b [c, k] and u [n, k]), added after the cap as the device adds it.
 */
function chunkLogits(g: GraphBuilder, d: number, rank: number, cap: number): { z: string; w: string; logits: string; slope?: string; b?: string; u?: string } {
  const z = g.input('z', 'float32', ['n', d]);
  const w = g.op('Cast', [g.input('w', 'float16', ['c', d])], { to: 1 }); // [c, d] float32
  let plain = g.matmul(z, g.transpose(w)); // [n, c]
  let slope: string | undefined;
  if (cap > 0) {
    const t = g.op('Tanh', [g.mul(plain, g.constant(1 / cap))]);
    slope = g.sub(g.constant(1), g.mul(t, t));
    plain = g.mul(t, g.constant(cap));
  }
  if (rank === 0) return { z, w, slope, logits: plain };
  const b = g.input('b', 'float32', ['c', rank]);
  const u = g.input('u', 'float32', ['n', rank]);
  return { z, w, slope, b, u, logits: g.add(plain, g.matmul(u, g.transpose(b))) };
}

/**
 * headChunk: one chunk of the online log-sum-exp; with `withAcc`, also
 * acc = sum_v exp(l_v - m) W_v (and, with a head update, acc_b = the same sum of B_v).
 */
export function buildHeadChunk(d: number, withAcc: boolean, rank = 0, cap = 0): Uint8Array {
  const g = new GraphBuilder(withAcc ? 'head_chunk_train' : 'head_chunk_eval');
  const { w, b, logits, slope } = chunkLogits(g, d, rank, cap);
  const m = g.input('m', 'float32', ['n', 1]);
  const s = g.input('s', 'float32', ['n', 1]);
  const mNew = g.op('Max', [m, g.maxLast(logits)]); // [n, 1]
  const scaleOld = g.op('Exp', [g.sub(m, mNew)]); // [n, 1]
  const e = g.op('Exp', [g.sub(logits, mNew)]); // [n, c]
  g.output(mNew, 'next_m', 'float32', ['n', 1]);
  g.output(g.add(g.mul(s, scaleOld), g.sumLast(e)), 'next_s', 'float32', ['n', 1]);
  if (withAcc) {
    const acc = g.input('acc', 'float32', ['n', d]);
    g.output(g.add(g.mul(acc, scaleOld), g.matmul(slope !== undefined ? g.mul(e, slope) : e, w)), 'next_acc', 'float32', ['n', d]);
    if (b) {
      const accB = g.input('acc_b', 'float32', ['n', rank]);
      g.output(g.add(g.mul(accB, scaleOld), g.matmul(e, b)), 'next_acc_b', 'float32', ['n', rank]);
      g.output(g.op('Cast', [e], { to: 10 }), 'e_half', 'float16', ['n', 'c']); // 10: FLOAT16
    }
  }
  return g.build();
}

/**
 * headChunkGrad: the softmax part of the head update's B gradient on one
 * chunk from what the train pass kept, dB_c = e_c^T (f u) [c, k] (the target
 * rows' -weights u is the trainer's).
 */
export function buildHeadChunkGrad(rank: number): Uint8Array {
  const g = new GraphBuilder('head_chunk_grad');
  const e = g.op('Cast', [g.input('e_half', 'float16', ['n', 'c'])], { to: 1 }); // [n, c] float32
  const fu = g.input('fu', 'float32', ['n', rank]);
  // (fu^T e)^T: the small [k, c] product is transposed, not the [n, c] softmax.
  g.output(g.transpose(g.matmul(g.transpose(fu), e)), 'grad_b', 'float32', ['c', rank]);
  return g.build();
}
