/**
 * The stand-in's pretraining step as one ONNX graph (issue 37): the forward
 * pass of llama.cpp's `llama` architecture as writeTinyModel writes it (RMS
 * norms, RoPE in llama.cpp's NORM mode on adjacent pairs, causal multi-head
 * attention, SwiGLU, an untied head) and its backward pass written out by hand,
 * built with the server's GraphBuilder and run by ONNX Runtime's CPU kernels.
 *
 * Inputs: every parameter under its GGUF name, in GGUF's row-major layout
 * ([out, in] for a matrix), `ids` [B, T] and `targets` [B * T].
 * Outputs: `loss` (mean cross-entropy), and with gradients `d:<name>` for every
 * parameter but the embedding, whose gradient comes back by row
 * (`d:token_embd.rows` [B * T, d], added into the rows of `ids` by the caller:
 * cheaper than a one-hot product over the vocabulary).
 */
import { GraphBuilder } from '../../../server/training/onnx/GraphBuilder';

/** The transformer's shape (kvHeads = heads: the stand-in has no grouped attention). */
export interface PretrainShape {
  layers: number;
  embd: number;
  heads: number;
  ff: number;
  vocab: number;
}

/** One parameter: its GGUF name, its dims in row-major order, and whether weight decay applies (matrices, not norms). */
export interface ParamSpec {
  name: string;
  dims: number[];
  decay: boolean;
}

/** Per-graph constants of the llama architecture as writeTinyModel writes it. */
export const ROPE_FREQ_BASE = 10000;
export const RMS_EPS = 1e-5;

/** The parameters, in writeTinyModel's tensor order. */
export function paramSpecs(s: PretrainShape): ParamSpec[] {
  const { embd: d, ff, vocab } = s;
  const out: ParamSpec[] = [
    { name: 'token_embd.weight', dims: [vocab, d], decay: true },
    { name: 'output_norm.weight', dims: [d], decay: false },
    { name: 'output.weight', dims: [vocab, d], decay: true },
  ];
  for (let l = 0; l < s.layers; l++) {
    out.push(
      { name: `blk.${l}.attn_norm.weight`, dims: [d], decay: false },
      { name: `blk.${l}.attn_q.weight`, dims: [d, d], decay: true },
      { name: `blk.${l}.attn_k.weight`, dims: [d, d], decay: true },
      { name: `blk.${l}.attn_v.weight`, dims: [d, d], decay: true },
      { name: `blk.${l}.attn_output.weight`, dims: [d, d], decay: true },
      { name: `blk.${l}.ffn_norm.weight`, dims: [d], decay: false },
      { name: `blk.${l}.ffn_gate.weight`, dims: [ff, d], decay: true },
      { name: `blk.${l}.ffn_up.weight`, dims: [ff, d], decay: true },
      { name: `blk.${l}.ffn_down.weight`, dims: [d, ff], decay: true },
    );
  }
  return out;
}

/** The gradient output of the embedding: one row per token of the batch. */
export const EMBEDDING_ROWS = 'd:token_embd.rows';

/**
 * The step's graph for batches of `batch` windows of `window` tokens.
 * `withGradients` false gives the forward and loss alone (validation).
 */
export function pretrainGraph(s: PretrainShape, batch: number, window: number, withGradients: boolean): Uint8Array {
  const { embd: d, heads: H, vocab: V } = s;
  const hd = d / H;
  const B = batch;
  const T = window;
  const N = B * T;
  const g = new GraphBuilder(withGradients ? 'pretrain-step' : 'pretrain-loss');
  const specs = paramSpecs(s);
  const p = new Map(specs.map((sp) => [sp.name, g.input(sp.name, 'float32', sp.dims)]));
  const P = (name: string): string => p.get(name)!;
  const ids = g.input('ids', 'int64', [B, T]);
  const targets = g.input('targets', 'int64', [N]);

  const gemm = (a: string, b: string, transA: number, transB: number): string => g.op('Gemm', [a, b], { transA, transB });
  const reshape = (x: string, shape: number[]): string => g.op('Reshape', [x, g.ints(shape)]);
  const perm = (x: string, order: number[]): string => g.op('Transpose', [x], { perm: order });
  const sumRows = (x: string): string => g.op('ReduceSum', [x, g.ints([0])], { keepdims: 0 }); // [N, k] -> [k]

  // RoPE tables, NORM mode: pair i of a head is (x[2i], x[2i+1]), angle pos * base^(-2i / hd).
  const cos: number[] = [];
  const sin: number[] = [];
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < hd / 2; i++) {
      const angle = t * Math.pow(ROPE_FREQ_BASE, (-2 * i) / hd);
      cos.push(Math.cos(angle));
      sin.push(Math.sin(angle));
    }
  }
  const cosT = g.constant(cos, [1, T, 1, hd / 2, 1]);
  const sinT = g.constant(sin, [1, T, 1, hd / 2, 1]);
  /** Rotates [N, d] by the positions' angles (`inverse`: by their negatives, the rotation's transpose). */
  const rope = (x: string, inverse: boolean): string => {
    const pairs = reshape(x, [B, T, H, hd / 2, 2]);
    const x0 = g.op('Slice', [pairs, g.ints([0]), g.ints([1]), g.ints([4])]); // [B, T, H, hd/2, 1]
    const x1 = g.op('Slice', [pairs, g.ints([1]), g.ints([2]), g.ints([4])]);
    const y0 = inverse ? g.add(g.mul(x0, cosT), g.mul(x1, sinT)) : g.sub(g.mul(x0, cosT), g.mul(x1, sinT));
    const y1 = inverse ? g.sub(g.mul(x1, cosT), g.mul(x0, sinT)) : g.add(g.mul(x0, sinT), g.mul(x1, cosT));
    return reshape(g.op('Concat', [y0, y1], { axis: 4 }), [N, d]);
  };
  const toHeads = (x: string): string => perm(reshape(x, [B, T, H, hd]), [0, 2, 1, 3]); // [N, d] -> [B, H, T, hd]
  const fromHeads = (x: string): string => reshape(perm(x, [0, 2, 1, 3]), [N, d]); // [B, H, T, hd] -> [N, d]
  const swapLast = (x: string): string => perm(x, [0, 1, 3, 2]);

  const mask: number[] = [];
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) mask.push(j > i ? -1e9 : 0);
  const causal = g.constant(mask, [T, T]);
  const scale = g.constant(1 / Math.sqrt(hd));
  const eps = g.constant(RMS_EPS);

  /** RMS norm of [N, d] rows times `weight`; returns the output and 1/rms [N, 1]. */
  const rmsNorm = (x: string, weight: string): { y: string; r: string } => {
    const r = g.op('Reciprocal', [g.op('Sqrt', [g.add(g.meanLast(g.mul(x, x)), eps)])]);
    return { y: g.mul(g.mul(x, r), weight), r };
  };
  /** The norm's backward: dx = r (dy w) - x r^3 mean(dy w x); dw = sum over rows of dy x r. */
  const rmsNormBack = (x: string, r: string, weight: string, dy: string): { dx: string; dw: string } => {
    const t = g.mul(dy, weight);
    const r3 = g.mul(g.mul(r, r), r);
    const dx = g.sub(g.mul(t, r), g.mul(g.mul(x, r3), g.meanLast(g.mul(t, x))));
    return { dx, dw: sumRows(g.mul(dy, g.mul(x, r))) };
  };

  // Forward. Residual stream x: [N, d].
  const saved: Record<string, string>[] = [];
  let x = g.op('Gather', [P('token_embd.weight'), reshape(ids, [N])], { axis: 0 });
  for (let l = 0; l < s.layers; l++) {
    const w = (n: string): string => P(`blk.${l}.${n}.weight`);
    const xIn = x;
    const n1 = rmsNorm(xIn, w('attn_norm'));
    const q = toHeads(rope(gemm(n1.y, w('attn_q'), 0, 1), false)); // [B, H, T, hd]
    const k = toHeads(rope(gemm(n1.y, w('attn_k'), 0, 1), false));
    const v = toHeads(gemm(n1.y, w('attn_v'), 0, 1));
    const probs = g.op('Softmax', [g.add(g.mul(g.matmul(q, swapLast(k)), scale), causal)], { axis: -1 }); // [B, H, T, T]
    const o = fromHeads(g.matmul(probs, v)); // [N, d]
    const xMid = g.add(xIn, gemm(o, w('attn_output'), 0, 1));
    const n2 = rmsNorm(xMid, w('ffn_norm'));
    const a = gemm(n2.y, w('ffn_gate'), 0, 1); // [N, ff]
    const b = gemm(n2.y, w('ffn_up'), 0, 1);
    const sa = g.op('Sigmoid', [a]);
    const silu = g.mul(a, sa);
    const m = g.mul(silu, b);
    x = g.add(xMid, gemm(m, w('ffn_down'), 0, 1));
    saved.push({ xIn, r1: n1.r, h1: n1.y, q, k, v, probs, o, xMid, r2: n2.r, h2: n2.y, a, b, sa, silu, m });
  }
  const nf = rmsNorm(x, P('output_norm.weight'));
  const logits = gemm(nf.y, P('output.weight'), 0, 1); // [N, V]
  const mx = g.maxLast(logits);
  const e = g.op('Exp', [g.sub(logits, mx)]);
  const se = g.sumLast(e);
  const lse = g.add(g.op('Log', [se]), mx); // [N, 1]
  const target2 = reshape(targets, [N, 1]);
  const picked = g.op('GatherElements', [logits, target2], { axis: 1 }); // [N, 1]
  g.output(g.op('ReduceMean', [g.sub(lse, picked)], { keepdims: 0 }), 'loss', 'float32', []);
  if (!withGradients) return g.build();

  // Backward of the mean cross-entropy: dlogits = (softmax - onehot) / N.
  const onehot = g.op('OneHot', [targets, g.ints([V]), g.constant([0, 1], [2])], { axis: -1 }); // [N, V]
  const dLogits = g.mul(g.sub(g.div(e, se), onehot), g.constant(1 / N));
  const grad = (name: string, value: string): void => {
    const spec = specs.find((sp) => sp.name === name)!;
    g.output(value, `d:${name}`, 'float32', spec.dims);
  };
  grad('output.weight', gemm(dLogits, nf.y, 1, 0));
  const back = rmsNormBack(x, nf.r, P('output_norm.weight'), gemm(dLogits, P('output.weight'), 0, 0));
  grad('output_norm.weight', back.dw);
  let dx = back.dx; // [N, d]
  for (let l = s.layers - 1; l >= 0; l--) {
    const w = (n: string): string => P(`blk.${l}.${n}.weight`);
    const sv = saved[l]!;
    const gw = (n: string, value: string): void => grad(`blk.${l}.${n}.weight`, value);
    // Feed-forward: x = xMid + (silu(a) * b) Wdown^T.
    gw('ffn_down', gemm(dx, sv.m!, 1, 0));
    const dm = gemm(dx, w('ffn_down'), 0, 0); // [N, ff]
    const db = g.mul(dm, sv.silu!);
    const dSilu = g.mul(dm, sv.b!);
    // silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)
    const da = g.mul(dSilu, g.mul(sv.sa!, g.add(g.constant(1), g.mul(sv.a!, g.sub(g.constant(1), sv.sa!)))));
    gw('ffn_gate', gemm(da, sv.h2!, 1, 0));
    gw('ffn_up', gemm(db, sv.h2!, 1, 0));
    const dh2 = g.add(gemm(da, w('ffn_gate'), 0, 0), gemm(db, w('ffn_up'), 0, 0));
    const b2 = rmsNormBack(sv.xMid!, sv.r2!, w('ffn_norm'), dh2);
    gw('ffn_norm', b2.dw);
    dx = g.add(dx, b2.dx);
    // Attention: xMid = xIn + o Wo^T.
    gw('attn_output', gemm(dx, sv.o!, 1, 0));
    const dO = toHeads(gemm(dx, w('attn_output'), 0, 0)); // [B, H, T, hd]
    const dP = g.matmul(dO, swapLast(sv.v!)); // [B, H, T, T]
    const dV = g.matmul(swapLast(sv.probs!), dO);
    const dS = g.mul(g.mul(sv.probs!, g.sub(dP, g.sumLast(g.mul(dP, sv.probs!)))), scale);
    const dq = rope(fromHeads(g.matmul(dS, sv.k!)), true); // [N, d], before the rotation
    const dk = rope(fromHeads(g.matmul(swapLast(dS), sv.q!)), true);
    const dv = fromHeads(dV);
    gw('attn_q', gemm(dq, sv.h1!, 1, 0));
    gw('attn_k', gemm(dk, sv.h1!, 1, 0));
    gw('attn_v', gemm(dv, sv.h1!, 1, 0));
    const dh1 = g.add(g.add(gemm(dq, w('attn_q'), 0, 0), gemm(dk, w('attn_k'), 0, 0)), gemm(dv, w('attn_v'), 0, 0));
    const b1 = rmsNormBack(sv.xIn!, sv.r1!, w('attn_norm'), dh1);
    gw('attn_norm', b1.dw);
    dx = g.add(dx, b1.dx);
  }
  g.output(dx, EMBEDDING_ROWS, 'float32', [N, d]);
  return g.build();
}
