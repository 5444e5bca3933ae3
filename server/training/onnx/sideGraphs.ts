import type { StepConstants } from '../../../common/learningRate';
import type { SideNetworkShape } from '../../../common/AdapterConfig';
import { ADAPTER_NORM_EPS, attentionBlocks, attentionHeadsOf, GATE_TEMPERATURE, hasAttention, ladderParameterNames, parameterShape } from '../sideNetworkSpec';
import { GraphBuilder } from './GraphBuilder';

/**
 * The side network's training step as ONNX graphs (the math of the side
 * network in README.md's Architecture section and of the TensorFlow.js
 * reference in harness/tfjs/, which checks them):
 *
 *   forward     h_k, params, norm weight -> z = output_norm(h_{K-1} + delta)        [n, d]
 *               (joinAfterNorm: z = output_norm(h_{K-1}) + delta)
 *   (the head's chunks: ./headGraphs.ts)
 *   evalLoss    m, s, z, target rows, mask -> loss sum
 *   sideDelta   h_k, params -> delta = s Out [n, d] (label-private: sent to the device)
 *   upstreamStep h_k, params, dy -> the backward from the device's gradient at
 *               the join, clipping and one Adam step (label-private)
 *
 * Dimensions: n tokens (given at run time), d hidden, r side width, b
 * bottleneck, c rows of a head chunk (given at run time); for a version-2
 * side network's attention, B sequences padded to T tokens (P = B T), H heads
 * of width e = r / H.
 */

const GELU_C = Math.sqrt(2 / Math.PI);

/** Input and output names, shared by the graphs and the trainer that feeds them. */
export const names = {
  layer: (k: number) => `h${k}`,
  param: (p: string) => `param/${p}`,
  adamM: (p: string) => `adam_m/${p}`,
  adamV: (p: string) => `adam_v/${p}`,
  nextParam: (p: string) => `next_param/${p}`,
  nextAdamM: (p: string) => `next_adam_m/${p}`,
  nextAdamV: (p: string) => `next_adam_v/${p}`,
  grad: (p: string) => `grad/${p}`,
};

/** Values of one attention sublayer (a version-2 block but the last), kept for the backward pass. */
interface AttentionValues {
  inv: string; // [n, 1]
  nrm: string; // [n, r] normalised x
  q: string; // [B, H, T, e] rotated
  k: string; // [B, H, T, e] rotated
  v: string; // [B, H, T, e]
  p: string; // [B, H, T, T] attention weights
  o: string; // [n, r] heads joined
}

/** The forward pass, recorded for the backward pass: every value the gradients need. */
interface LadderValues {
  /** The side network's output at the join: s Out, added to the last layer's hidden state. */
  delta: string; // [n, d]
  sFinal: string; // [n, r]
  /** Version 2: rms of the last layer's hidden state [n, 1], the join's scale. */
  joinScale?: string;
  layers: {
    a: string; sPrev: string; x: string; mu: string;
    /** What Down reads: the tapped layer's state, RMS-normalised in version 2. */
    input: string;
    attn?: AttentionValues;
    /** x plus the attention's output (x itself without attention): the MLP's input. */
    x2: string;
    inv: string; nrm: string; pre: string; g: string;
  }[];
}

interface ForwardValues extends LadderValues {
  z: string; // [n, d]
  xhat: string; // [n, d] normalised y
  invHead: string; // [n, 1]
}

function gelu(g: GraphBuilder, x: string): string {
  const cube = g.mul(g.mul(x, x), x);
  const t = g.op('Tanh', [g.mul(g.add(x, g.mul(cube, g.constant(0.044715))), g.constant(GELU_C))]);
  return g.mul(g.mul(x, g.constant(0.5)), g.add(t, g.constant(1)));
}

function geluGrad(g: GraphBuilder, x: string): string {
  const x2 = g.mul(x, x);
  const t = g.op('Tanh', [g.mul(g.add(x, g.mul(g.mul(x2, x), g.constant(0.044715))), g.constant(GELU_C))]);
  const dt = g.mul(g.sub(g.constant(1), g.mul(t, t)), g.mul(g.add(g.mul(x2, g.constant(3 * 0.044715)), g.constant(1)), g.constant(GELU_C)));
  return g.add(g.mul(g.add(t, g.constant(1)), g.constant(0.5)), g.mul(g.mul(x, g.constant(0.5)), dt));
}

/** 1 / sqrt(mean(x^2) + eps) over the last axis: [n, k] -> [n, 1]. */
function invRms(g: GraphBuilder, x: string, eps: string): string {
  return g.op('Reciprocal', [g.op('Sqrt', [g.add(g.meanLast(g.mul(x, x)), eps)])]);
}

/**
 * The sequence layout a version-2 side network attends within, as graph
 * inputs: rows are the batch's sequences concatenated; attention runs on them
 * padded to [B, T] (pad rows after each sequence's end, so causal attention
 * never reads them).
 *   pad_index   int64 [B*T]: the row at each padded position (n: a zero row)
 *   unpad_index int64 [n]:   each row's padded position
 *   attn_shape  int64 [4]:   B, T, heads, head width
 *   rope_cos, rope_sin [T, e/2]; causal_mask [T, T] (0, or -1e9 above the diagonal)
 */
interface Layout {
  r: number;
  heads: number;
  width: number;
}

/** [n, r] -> [B, H, T, e] (the adjoint of fromHeads). */
function toHeads(g: GraphBuilder, L: Layout, x: string): string {
  const ext = g.op('Concat', [x, g.constant(new Array(L.r).fill(0), [1, L.r])], { axis: 0 }); // [n+1, r]
  const padded = g.op('Gather', [ext, 'pad_index'], { axis: 0 }); // [B*T, r]
  return g.op('Transpose', [g.op('Reshape', [padded, 'attn_shape'])], { perm: [0, 2, 1, 3] });
}

/** [B, H, T, e] -> [n, r] (the adjoint of toHeads). */
function fromHeads(g: GraphBuilder, L: Layout, x: string): string {
  const flat = g.op('Reshape', [g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), g.ints([-1, L.r])]); // [B*T, r]
  return g.op('Gather', [flat, 'unpad_index'], { axis: 0 });
}

/** The two halves of the last axis of [B, H, T, e]. */
function halves(g: GraphBuilder, L: Layout, x: string): [string, string] {
  const h = L.width / 2;
  return [g.op('Slice', [x, g.ints([0]), g.ints([h]), g.ints([3])]), g.op('Slice', [x, g.ints([h]), g.ints([L.width]), g.ints([3])])];
}

/** RoPE: pair (x_i, x_{i+e/2}) rotated by position t's angle i; `inverse` rotates back (the adjoint). */
function rope(g: GraphBuilder, L: Layout, x: string, inverse: boolean): string {
  const [x1, x2] = halves(g, L, x);
  const c = 'rope_cos';
  const s = 'rope_sin';
  const first = inverse ? g.add(g.mul(x1, c), g.mul(x2, s)) : g.sub(g.mul(x1, c), g.mul(x2, s));
  const second = inverse ? g.sub(g.mul(x2, c), g.mul(x1, s)) : g.add(g.mul(x2, c), g.mul(x1, s));
  return g.op('Concat', [first, second], { axis: 3 });
}

const swapLast = (g: GraphBuilder, x: string): string => g.op('Transpose', [x], { perm: [0, 1, 3, 2] });

/** Causal multi-head self-attention of x [n, r] within each sequence: its output (heads joined, before Wo) and what the backward needs. */
function attention(g: GraphBuilder, L: Layout, x: string, k: number): AttentionValues {
  const inv = invRms(g, x, g.constant(ADAPTER_NORM_EPS)); // [n, 1]
  const nrm = g.mul(x, inv); // [n, r]
  const q = rope(g, L, toHeads(g, L, g.matmul(nrm, names.param(`wq.${k}`))), false); // [B, H, T, e]
  const kk = rope(g, L, toHeads(g, L, g.matmul(nrm, names.param(`wk.${k}`))), false);
  const v = toHeads(g, L, g.matmul(nrm, names.param(`wv.${k}`)));
  const scores = g.add(g.mul(g.matmul(q, swapLast(g, kk)), g.constant(1 / Math.sqrt(L.width))), 'causal_mask'); // [B, H, T, T]
  const p = g.op('Softmax', [scores], { axis: -1 });
  const o = fromHeads(g, L, g.matmul(p, v)); // [n, r]
  return { inv, nrm, q, k: kk, v, p, o };
}

/** The attention sublayer's backward: dx2 [n, r] (gradient at x + o Wo) -> the gradient at x, and the four weights' gradients. */
function attentionBackward(g: GraphBuilder, L: Layout, A: AttentionValues, dx2: string, k: number, grads: Map<string, string>): string {
  grads.set(`wo.${k}`, g.matmul(g.transpose(A.o), dx2)); // [r, r]
  const dO = toHeads(g, L, g.matmul(dx2, g.transpose(names.param(`wo.${k}`)))); // [B, H, T, e]
  const dV = g.matmul(swapLast(g, A.p), dO); // [B, H, T, e]
  const dP = g.matmul(dO, swapLast(g, A.v)); // [B, H, T, T]
  const dS = g.mul(A.p, g.sub(dP, g.op('ReduceSum', [g.mul(dP, A.p), g.ints([-1])], { keepdims: 1 }))); // [B, H, T, T]
  const scale = g.constant(1 / Math.sqrt(L.width));
  const dQ = fromHeads(g, L, rope(g, L, g.mul(g.matmul(dS, A.k), scale), true)); // [n, r]
  const dK = fromHeads(g, L, rope(g, L, g.mul(g.matmul(swapLast(g, dS), A.q), scale), true));
  const dVr = fromHeads(g, L, dV);
  grads.set(`wq.${k}`, g.matmul(g.transpose(A.nrm), dQ));
  grads.set(`wk.${k}`, g.matmul(g.transpose(A.nrm), dK));
  grads.set(`wv.${k}`, g.matmul(g.transpose(A.nrm), dVr));
  const dn = g.add(g.add(g.matmul(dQ, g.transpose(names.param(`wq.${k}`))), g.matmul(dK, g.transpose(names.param(`wk.${k}`)))), g.matmul(dVr, g.transpose(names.param(`wv.${k}`)))); // [n, r]
  return g.add(dx2, g.mul(A.inv, g.sub(dn, g.mul(A.nrm, g.meanLast(g.mul(dn, A.nrm)))))); // [n, r]
}

/** Declares the side network's parameters, the tapped layers (and, for attention, the layout inputs), and runs the ladder up to its output at the join. */
function sideLadder(g: GraphBuilder, shape: SideNetworkShape): LadderValues {
  const { d } = shape;
  const K = shape.tappedLayers.length;
  for (const p of ladderParameterNames(shape)) g.input(names.param(p), 'float32', parameterShape(shape, p));
  const hs = Array.from({ length: K }, (_, k) => g.input(names.layer(k), 'float32', ['n', d]));
  const layout = declareLayout(g, shape);
  const layers: LadderValues['layers'] = [];
  let s = ''; // [n, r]; zero before the first layer
  const v2 = shape.sideNetwork === 2;
  const eps = g.constant(ADAPTER_NORM_EPS);
  for (let k = 0; k < K; k++) {
    // Version 2 reads each layer at unit scale, so the blocks' residual branches matter whatever the backbone's hidden-state scale.
    const input = v2 ? g.mul(hs[k]!, invRms(g, hs[k]!, eps)) : hs[k]!; // [n, d]
    const a = g.matmul(input, names.param(`down.${k}`)); // [n, r]
    const mu = g.op('Sigmoid', [g.div(names.param(`alpha.${k}`), g.constant(GATE_TEMPERATURE))]); // [1]
    const sPrev = k === 0 ? g.mul(a, g.constant(0)) : s;
    const x = g.add(g.mul(g.sub(g.constant(1), mu), a), g.mul(mu, sPrev)); // [n, r]
    const attn = layout && hasAttention(shape, k) ? attention(g, layout, x, k) : undefined;
    const x2 = attn ? g.add(x, g.matmul(attn.o, names.param(`wo.${k}`))) : x; // [n, r]
    const inv = invRms(g, x2, g.constant(ADAPTER_NORM_EPS)); // [n, 1]
    const nrm = g.mul(x2, inv); // [n, r]
    const pre = g.matmul(nrm, names.param(`mid.${k}`)); // [n, b]
    const gl = gelu(g, pre); // [n, b]
    s = g.add(x2, g.matmul(gl, names.param(`up.${k}`))); // [n, r]
    layers.push({ a, sPrev, x, mu, input, attn, x2, inv, nrm, pre, g: gl });
  }
  // After the final norm the hidden state is at unit scale already; before it,
  // version 2 joins relative to the last layer's scale: delta = rms(h) s Out.
  if (!v2 || shape.joinAfterNorm) return { delta: g.matmul(s, names.param('out')), sFinal: s, layers };
  const last = hs[K - 1]!;
  const joinScale = g.op('Sqrt', [g.add(g.meanLast(g.mul(last, last)), eps)]); // [n, 1]
  return { delta: g.mul(g.matmul(s, names.param('out')), joinScale), sFinal: s, layers, joinScale };
}

/** The layout inputs, when some block of `shape` attends. */
function declareLayout(g: GraphBuilder, shape: SideNetworkShape): Layout | undefined {
  if (attentionBlocks(shape) === 0) return undefined;
  const { attentionHeads: heads, width } = attentionHeadsOf(shape);
  g.input('pad_index', 'int64', ['P']);
  g.input('unpad_index', 'int64', ['n']);
  g.input('attn_shape', 'int64', [4]);
  g.input('rope_cos', 'float32', ['T', width / 2]);
  g.input('rope_sin', 'float32', ['T', width / 2]);
  g.input('causal_mask', 'float32', ['T', 'T']);
  return { r: shape.r, heads, width };
}

/**
 * The ladder, the join and the backbone's final norm (its weight and epsilon
 * are inputs): z = norm(h + delta) w, or with `joinAfterNorm` z = norm(h) w + delta;
 * with `layerNorm` (starcoder2) the norm centres y first and adds the input
 * norm_bias: z = (y - mean) / std w + b.
 */
function sideForward(g: GraphBuilder, shape: SideNetworkShape, layerNorm: boolean): ForwardValues {
  const K = shape.tappedLayers.length;
  const ladder = sideLadder(g, shape);
  const normWeight = g.input('norm_weight', 'float32', [shape.d]);
  const headEps = g.input('head_eps', 'float32', []);
  const joined = shape.joinAfterNorm ? names.layer(K - 1) : g.add(names.layer(K - 1), ladder.delta); // [n, d]
  const y = layerNorm ? g.sub(joined, g.meanLast(joined)) : joined;
  const invHead = invRms(g, y, headEps); // [n, 1]: 1 / rms, or 1 / std once centred
  const xhat = g.mul(y, invHead); // [n, d]
  const scaled = g.mul(xhat, normWeight); // [n, d]
  const normed = layerNorm ? g.add(scaled, g.input('norm_bias', 'float32', [shape.d])) : scaled;
  const z = shape.joinAfterNorm ? g.add(normed, ladder.delta) : normed;
  return { ...ladder, z, xhat, invHead };
}

/** forward: -> z [n, d]. */
export function buildForward(shape: SideNetworkShape, layerNorm = false): Uint8Array {
  const g = new GraphBuilder('side_forward');
  const f = sideForward(g, shape, layerNorm);
  g.output(f.z, 'z', 'float32', ['n', shape.d]);
  return g.build();
}

/** Per-token loss m + log s - the target's logit (the trainer's, OnnxTrainer.lossFeeds): [n, 1]. */
function tokenLoss(g: GraphBuilder, m: string, s: string, targetLogit: string): string {
  return g.sub(g.add(m, g.op('Log', [s])), targetLogit);
}

/** evalLoss: -> loss_sum (masked). */
export function buildEvalLoss(): Uint8Array {
  const g = new GraphBuilder('eval_loss');
  const m = g.input('m', 'float32', ['n', 1]);
  const s = g.input('s', 'float32', ['n', 1]);
  const tl = g.input('target_logit', 'float32', ['n', 1]);
  const mask = g.input('mask', 'float32', ['n', 1]);
  g.output(g.sumAll(g.mul(tokenLoss(g, m, s, tl), mask)), 'loss_sum', 'float32', []);
  return g.build();
}

/** Adam and clipping constants (the trainer's defaults). */
export type { StepConstants } from '../../../common/learningRate';

/** The gradient of every parameter, given dL/dy at the join (y = last layer + delta). */
function backwardFromJoin(g: GraphBuilder, shape: SideNetworkShape, f: LadderValues, dy: string): Map<string, string> {
  const K = shape.tappedLayers.length;
  const { attentionHeads: heads, width } = attentionHeadsOf(shape);
  const layout: Layout | undefined = f.layers.some((L) => L.attn) ? { r: shape.r, heads, width } : undefined;
  const grads = new Map<string, string>();
  if (f.joinScale) dy = g.mul(dy, f.joinScale); // [n, d]: the gradient at s Out
  grads.set('out', g.matmul(g.transpose(f.sFinal), dy)); // [r, d]
  let ds = g.matmul(dy, g.transpose(names.param('out'))); // [n, r]
  for (let k = K - 1; k >= 0; k--) {
    const L = f.layers[k]!;
    grads.set(`up.${k}`, g.matmul(g.transpose(L.g), ds)); // [b, r]
    const dpre = g.mul(g.matmul(ds, g.transpose(names.param(`up.${k}`))), geluGrad(g, L.pre)); // [n, b]
    grads.set(`mid.${k}`, g.matmul(g.transpose(L.nrm), dpre)); // [r, b]
    const dnk = g.matmul(dpre, g.transpose(names.param(`mid.${k}`))); // [n, r]
    const dx2 = g.add(ds, g.mul(L.inv, g.sub(dnk, g.mul(L.nrm, g.meanLast(g.mul(dnk, L.nrm)))))); // [n, r]
    const dx = L.attn ? attentionBackward(g, layout!, L.attn, dx2, k, grads) : dx2; // [n, r]
    const da = g.mul(g.sub(g.constant(1), L.mu), dx); // [n, r]
    const dmu = g.sumAll(g.mul(dx, g.sub(L.sPrev, L.a))); // scalar
    const dAlpha = g.div(g.mul(dmu, g.mul(L.mu, g.sub(g.constant(1), L.mu))), g.constant(GATE_TEMPERATURE)); // [1]
    grads.set(`alpha.${k}`, dAlpha);
    grads.set(`down.${k}`, g.matmul(g.transpose(L.input), da)); // [d, r]
    ds = g.mul(L.mu, dx); // [n, r]
  }
  return grads;
}

/** Global-norm clipping and one Adam step: outputs grad_norm, grad/*, next_param/*, next_adam_m/*, next_adam_v/*. */
function clipAndAdam(g: GraphBuilder, shape: SideNetworkShape, grads: Map<string, string>, c: StepConstants): void {
  const lr = g.input('learning_rate', 'float32', []);
  const c1 = g.input('bias_correction1', 'float32', []);
  const c2 = g.input('bias_correction2', 'float32', []);
  const order = ladderParameterNames(shape);
  const squares = order.map((p) => g.sumAll(g.mul(grads.get(p)!, grads.get(p)!)));
  const norm = g.op('Sqrt', [squares.reduce((acc2, q) => g.add(acc2, q))]);
  g.output(norm, 'grad_norm', 'float32', []);
  const scale = g.op('Min', [g.constant(1), g.div(g.constant(c.clipNorm), g.add(norm, g.constant(1e-12)))]);
  for (const p of order) {
    const dims = parameterShape(shape, p);
    g.output(grads.get(p)!, names.grad(p), 'float32', dims);
    const gp = g.mul(grads.get(p)!, scale);
    const mPrev = g.input(names.adamM(p), 'float32', dims);
    const vPrev = g.input(names.adamV(p), 'float32', dims);
    const mNext = g.add(g.mul(mPrev, g.constant(c.beta1)), g.mul(gp, g.constant(1 - c.beta1)));
    const vNext = g.add(g.mul(vPrev, g.constant(c.beta2)), g.mul(g.mul(gp, gp), g.constant(1 - c.beta2)));
    const update = g.mul(g.div(g.div(mNext, c1), g.add(g.op('Sqrt', [g.div(vNext, c2)]), g.constant(c.epsilon))), lr);
    g.output(g.sub(names.param(p), update), names.nextParam(p), 'float32', dims);
    g.output(mNext, names.nextAdamM(p), 'float32', dims);
    g.output(vNext, names.nextAdamV(p), 'float32', dims);
  }
}

/**
 * trainStep: the forward again (cheaper than moving every cached value
 * between graphs), the loss sum, gradients of sum(weights * loss), clipping
 * and one Adam step. Outputs next_param/*, next_adam_m/*, next_adam_v/*,
 * loss_sum, grad_norm, and grad/* (fetched by the gradient tests only).
 */
export function buildTrainStep(shape: SideNetworkShape, c: StepConstants, layerNorm = false): Uint8Array {
  const g = new GraphBuilder('train_step');
  const { d } = shape;
  const f = sideForward(g, shape, layerNorm);
  const m = g.input('m', 'float32', ['n', 1]);
  const s = g.input('s', 'float32', ['n', 1]);
  const acc = g.input('acc', 'float32', ['n', d]);
  const wt = g.input('target_rows', 'float32', ['n', d]); // d(target's logit)/dz
  const tl = g.input('target_logit', 'float32', ['n', 1]);
  const mask = g.input('mask', 'float32', ['n', 1]);
  const weights = g.input('weights', 'float32', ['n', 1]); // mask / tokens
  g.output(g.sumAll(g.mul(tokenLoss(g, m, s, tl), mask)), 'loss_sum', 'float32', []);

  // dL/dz = w (softmax W - W[target]) (each row times a soft cap's slope, in acc and target_rows); then, for a join before it, back through the final norm.
  const dz = g.mul(g.sub(g.div(acc, s), wt), weights); // [n, d]
  let dy = dz; // [n, d]
  if (!shape.joinAfterNorm) {
    const dn = g.mul(dz, 'norm_weight'); // [n, d]
    const centred = layerNorm ? g.sub(dn, g.meanLast(dn)) : dn;
    dy = g.mul(f.invHead, g.sub(centred, g.mul(f.xhat, g.meanLast(g.mul(dn, f.xhat)))));
  }
  clipAndAdam(g, shape, backwardFromJoin(g, shape, f, dy), c);
  return g.build();
}

/** Label-private mode, first half: the side network's output at the join, delta [n, d], sent to the device. */
export function buildSideDelta(shape: SideNetworkShape): Uint8Array {
  const g = new GraphBuilder('side_delta');
  g.output(sideLadder(g, shape).delta, 'delta', 'float32', ['n', shape.d]);
  return g.build();
}

/**
 * Label-private mode, second half: the device computed the loss and its
 * gradient dy [n, d] at the join with the model's own head; from it, the
 * side network's backward, clipping and one Adam step (outputs as trainStep,
 * without loss_sum).
 */
export function buildUpstreamStep(shape: SideNetworkShape, c: StepConstants): Uint8Array {
  const g = new GraphBuilder('upstream_step');
  const f = sideLadder(g, shape);
  const dy = g.input('dy', 'float32', ['n', shape.d]);
  clipAndAdam(g, shape, backwardFromJoin(g, shape, f, dy), c);
  return g.build();
}
