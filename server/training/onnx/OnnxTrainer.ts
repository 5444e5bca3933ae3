import { stepConstants } from '../../../common/learningRate';
import { ort } from './ort';
import type { SideNetworkShape } from '../../../common/AdapterConfig';
import type { ActivationBatch } from '../../../common/batchPayload';
import { attentionBlocks, attentionHeadsOf, ladderParameterNames, LayoutError, paddedLayout, parameterNames, parameterShape, ropeTables } from '../sideNetworkSpec';
import { learningRateAt, OptimizerState, TrainerOptions } from '../TrainerOptions';
import { OnnxEngine } from './OnnxEngine';
import { OnnxHead } from './OnnxHead';
import { HeadUpdate } from './HeadUpdate';
import { buildHeadChunk, buildHeadChunkGrad } from './headGraphs';
import { buildEvalLoss, buildForward, buildSideDelta, buildTrainStep, buildUpstreamStep, names, StepConstants } from './sideGraphs';

type Feeds = Record<string, ort.Tensor>;

/** One step's result, as the job acknowledges it. */
export interface StepResult {
  /** Mean masked loss of the batch, before the step. */
  loss: number;
  learningRate: number;
  /** Steps done, this one included. */
  step: number;
  tokens: number;
  /** The loss or the gradient was not finite: the weights were left as they were. */
  skipped: boolean;
}

/** What the train pass keeps of a head chunk for B's gradient: e = exp(l - m) as float16 [n, c], and m after the chunk [n]. */
interface KeptChunk {
  eHalf: ort.Tensor;
  m: Float32Array;
}

const f32 = (data: Float32Array, dims: number[]): ort.Tensor => new ort.Tensor('float32', data, dims);
const scalar = (x: number): ort.Tensor => f32(Float32Array.of(x), []);

/**
 * One job's side network and Adam state, trained by the ONNX engine against
 * a frozen head: forward, the head in chunks with an online log-sum-exp,
 * then one graph for the loss, the hand-written backward, clipping and Adam.
 * Parameters and moments live here as float32 arrays between steps.
 */
export class OnnxTrainer {
  step: number;
  private params: Map<string, Float32Array>;
  private m: Map<string, Float32Array>;
  private v: Map<string, Float32Array>;
  private readonly constants: StepConstants;
  private readonly shapeKey: string;

  constructor(
    private readonly engine: OnnxEngine,
    readonly shape: SideNetworkShape,
    /** The frozen head; absent for a label-private job (the device computes the loss). */
    private readonly head: OnnxHead | undefined,
    values: Map<string, Float32Array>,
    /** The schedule, and the model's final logit soft cap (0 or absent: none; extension/core/model/headDescription.ts). */
    readonly options: TrainerOptions & { softCap?: number },
    state?: OptimizerState,
  ) {
    this.step = state?.step ?? 0;
    const zeros = (p: string): Float32Array => new Float32Array(values.get(p)!.length);
    this.params = new Map(parameterNames(shape).map((p) => [p, Float32Array.from(values.get(p)!)]));
    this.m = new Map(parameterNames(shape).map((p) => [p, state?.m.get(p) ?? zeros(p)]));
    this.v = new Map(parameterNames(shape).map((p) => [p, state?.v.get(p) ?? zeros(p)]));
    this.constants = stepConstants(options);
    this.shapeKey = `v${shape.sideNetwork ?? 1}h${shape.attentionHeads ?? 0}${shape.joinAfterNorm ? 'j' : ''}-${shape.d}x${shape.r}x${shape.b}x${shape.tappedLayers.length}`;
    this.attends = attentionBlocks(shape) > 0;
    this.headUpdate = new HeadUpdate(shape);
  }

  /** The head update beside the side network (rank 0: none). */
  private readonly headUpdate: HeadUpdate;

  /** Some block attends: every graph takes the batch's sequence layout. */
  private readonly attends: boolean;
  /** RoPE tables for the longest sequence seen so far. */
  private rope?: { T: number; cos: Float32Array; sin: Float32Array };

  private sessions() {
    const { d } = this.shape;
    const k = this.headUpdate.rank;
    const c = this.constants;
    const cap = this.softCap;
    return Promise.all([
      this.engine.session(`forward-${this.shapeKey}${this.layerNorm ? '-ln' : ''}`, () => buildForward(this.shape, this.layerNorm), this),
      this.engine.session(`head-train-${d}-k${k}-c${cap}`, () => buildHeadChunk(d, true, k, cap), this),
      this.engine.session(`head-eval-${d}-k${k}-c${cap}`, () => buildHeadChunk(d, false, k, cap), this),
      this.engine.session(this.stepKey(this.layerNorm ? 'step-ln' : 'step'), () => buildTrainStep(this.shape, c, this.layerNorm), this),
      this.engine.session('eval', () => buildEvalLoss(), this),
    ]);
  }

  /** The model's final norm is a LayerNorm with a bias (the head carries it). */
  private get layerNorm(): boolean {
    return this.head?.normBias !== undefined;
  }

  private get softCap(): number {
    return this.options.softCap ?? 0;
  }

  private get frozenHead(): OnnxHead {
    if (!this.head) throw new RangeError('a label-private job has no head on the server');
    return this.head;
  }

  /**
   * Inputs of the side network's ladder: parameters and layers, and for a
   * version-2 network the sequences' layout (`lengths`, summing to rows;
   * LayoutError when they are absent or do not).
   */
  private ladderFeeds(layers: Float32Array[], rows: number, lengths: readonly number[] | undefined): Feeds {
    const feeds: Feeds = {};
    for (const p of ladderParameterNames(this.shape)) feeds[names.param(p)] = f32(this.params.get(p)!, parameterShape(this.shape, p));
    layers.forEach((h, k) => (feeds[names.layer(k)] = f32(h, [rows, this.shape.d])));
    if (this.attends) Object.assign(feeds, this.layoutFeeds(lengths, rows));
    return feeds;
  }

  private layoutFeeds(lengths: readonly number[] | undefined, rows: number): Feeds {
    if (!lengths) throw new LayoutError('a version-2 side network needs the batch\'s sequence lengths');
    const L = paddedLayout(lengths, rows);
    const { attentionHeads: heads, width } = attentionHeadsOf(this.shape);
    if (!this.rope || this.rope.T < L.T) this.rope = { T: L.T, ...ropeTables(L.T, width) };
    const half = width / 2;
    return {
      pad_index: new ort.Tensor('int64', L.padIndex, [L.B * L.T]),
      unpad_index: new ort.Tensor('int64', L.unpadIndex, [rows]),
      attn_shape: new ort.Tensor('int64', BigInt64Array.of(BigInt(L.B), BigInt(L.T), BigInt(heads), BigInt(width)), [4]),
      rope_cos: f32(this.rope.cos.subarray(0, L.T * half), [L.T, half]),
      rope_sin: f32(this.rope.sin.subarray(0, L.T * half), [L.T, half]),
      causal_mask: f32(L.causalMask, [L.T, L.T]),
    };
  }

  /** Inputs of every graph with the side network and the head: parameters, layers, layout, the final norm. */
  private sideFeeds(batch: ActivationBatch): Feeds {
    const head = this.frozenHead;
    return { ...this.ladderFeeds(batch.layers, batch.rows, batch.lengths), norm_weight: head.norm, head_eps: head.epsTensor, ...(head.normBias ? { norm_bias: head.normBias } : {}) };
  }

  private stepKey(kind: string): string {
    const c = this.constants;
    return `${kind}-${this.shapeKey}-${c.clipNorm}-${c.beta1}-${c.beta2}-${c.epsilon}`;
  }

  /** Label-private: the side network's output at the join, delta [rows][d], with the current weights. */
  async sideDelta(layers: Float32Array[], rows: number, lengths?: readonly number[]): Promise<Float32Array> {
    const session = await this.engine.session(`delta-${this.shapeKey}`, () => buildSideDelta(this.shape), this);
    return (await session.run(this.ladderFeeds(layers, rows, lengths))).delta!.data as Float32Array;
  }

  /**
   * Label-private: one optimizer step from the device's gradient at the join,
   * dy [rows][d] = d(mean masked loss)/dy. Skipped (but counted) when dy or
   * the gradient is not finite, or when no token counts.
   */
  async upstreamStep(layers: Float32Array[], rows: number, lengths: readonly number[] | undefined, dy: Float32Array, lossSum: number, tokens: number): Promise<StepResult> {
    const lr = learningRateAt(this.step, this.options);
    const result = (skipped: boolean): StepResult => {
      this.step += 1;
      return { loss: tokens > 0 ? lossSum / tokens : 0, learningRate: lr, step: this.step, tokens, skipped };
    };
    if (tokens === 0) return result(false);
    if (!Number.isFinite(lossSum)) return result(true);
    const session = await this.engine.session(this.stepKey('upstream'), () => buildUpstreamStep(this.shape, this.constants), this);
    const out = await this.stepOutputs(session, { ...this.ladderFeeds(layers, rows, lengths), dy: f32(dy, [rows, this.shape.d]) }, lr);
    if (!Number.isFinite(Number(out.grad_norm!.data[0]))) return result(true);
    this.adopt(out);
    return result(false);
  }

  /** Runs a step graph with the Adam state and the learning rate fed: grad_norm, the next weights and moments, and `extra`. */
  private stepOutputs(session: ort.InferenceSession, feeds: Feeds, lr: number, extra: string[] = []): Promise<ort.InferenceSession.ReturnType> {
    const t = this.step + 1;
    const all: Feeds = { ...feeds, learning_rate: scalar(lr), bias_correction1: scalar(1 - this.constants.beta1 ** t), bias_correction2: scalar(1 - this.constants.beta2 ** t) };
    for (const p of ladderParameterNames(this.shape)) {
      const dims = parameterShape(this.shape, p);
      all[names.adamM(p)] = f32(this.m.get(p)!, dims);
      all[names.adamV(p)] = f32(this.v.get(p)!, dims);
    }
    return session.run(all, [...extra, 'grad_norm', ...ladderParameterNames(this.shape).flatMap((p) => [names.nextParam(p), names.nextAdamM(p), names.nextAdamV(p)])]);
  }

  /** Keeps a step's next weights and moments. */
  private adopt(out: ort.InferenceSession.ReturnType): void {
    for (const p of ladderParameterNames(this.shape)) {
      this.params.set(p, out[names.nextParam(p)]!.data as Float32Array);
      this.m.set(p, out[names.nextAdamM(p)]!.data as Float32Array);
      this.v.set(p, out[names.nextAdamV(p)]!.data as Float32Array);
    }
  }

  /**
   * z, then the online log-sum-exp over every head chunk (and, to train,
   * acc); with a head update, u = z A and (to train) acc_b.
   */
  private async headPass(batch: ActivationBatch, train: boolean): Promise<{ feeds: Feeds; z: ort.Tensor; m: ort.Tensor; s: ort.Tensor; acc?: ort.Tensor; u?: Float32Array; accB?: ort.Tensor; kept: KeptChunk[] }> {
    const [forward, headTrain, headEval] = await this.sessions();
    const n = batch.rows;
    const k = this.headUpdate.rank;
    const feeds = this.sideFeeds(batch);
    const z = (await forward.run(feeds)).z!;
    const u = k > 0 ? this.headUpdate.project(z.data as Float32Array, this.params.get('head_a')!) : undefined;
    let m = f32(new Float32Array(n).fill(-Infinity), [n, 1]);
    let s = f32(new Float32Array(n), [n, 1]);
    let acc = train ? f32(new Float32Array(n * this.shape.d), [n, this.shape.d]) : undefined;
    let accB = train && u ? f32(new Float32Array(n * k), [n, k]) : undefined;
    const kept: KeptChunk[] = [];
    for (const [c, w] of this.frozenHead.chunks.entries()) {
      const lowRank: Feeds = u ? { b: this.chunkOfB(c), u: f32(u, [n, k]), ...(accB ? { acc_b: accB } : {}) } : {};
      const out = await (train ? headTrain : headEval).run(train ? { z, w, m, s, acc: acc!, ...lowRank } : { z, w, m, s, ...lowRank });
      m = out.next_m!;
      s = out.next_s!;
      if (train) acc = out.next_acc!;
      if (accB) {
        accB = out.next_acc_b!;
        kept.push({ eHalf: out.e_half!, m: m.data as Float32Array });
      }
    }
    return { feeds, z, m, s, acc, u, accB, kept };
  }

  /** The head update's B rows of head chunk c: [rows, k]. */
  private chunkOfB(c: number): ort.Tensor {
    const k = this.headUpdate.rank;
    const start = this.frozenHead.starts[c]!;
    const rows = this.frozenHead.chunks[c]!.dims[0]!;
    return f32(this.params.get('head_b')!.subarray(start * k, (start + rows) * k), [rows, k]);
  }

  private static tokensOf(batch: ActivationBatch): number {
    let t = 0;
    for (let i = 0; i < batch.rows; i++) t += batch.mask[i]!;
    return t;
  }

  /**
   * The loss graphs' inputs: each target's logit, cap(z . W_t) + u . B_t, and
   * its gradient wrt z, the target rows slope_t W_t + A B_t (slope 1 without a
   * soft cap; B's terms with a head update).
   */
  private lossFeeds(batch: ActivationBatch, m: ort.Tensor, s: ort.Tensor, z: ort.Tensor, u: Float32Array | undefined): { eval: Feeds; targetRows: ort.Tensor } {
    const { d } = this.shape;
    const n = batch.rows;
    const k = this.headUpdate.rank;
    const cap = this.softCap;
    const zs = z.data as Float32Array;
    let rows = this.frozenHead.targetRows(batch.targets);
    const bt = u ? this.headUpdate.targetRows(this.params.get('head_b')!, batch.targets) : undefined;
    const logit = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let h = 0;
      for (let c = 0; c < d; c++) h += zs[i * d + c]! * rows[i * d + c]!;
      if (cap > 0) {
        const t = Math.tanh(h / cap);
        h = cap * t;
        for (let c = 0; c < d; c++) rows[i * d + c]! *= 1 - t * t;
      }
      for (let j = 0; bt && j < k; j++) h += u![i * k + j]! * bt[i * k + j]!;
      logit[i] = h;
    }
    if (bt) rows = this.headUpdate.addLifted(rows, bt, this.params.get('head_a')!);
    return { eval: { m, s, target_logit: f32(logit, [n, 1]), mask: f32(Float32Array.from(batch.mask), [n, 1]) }, targetRows: f32(rows, [n, d]) };
  }

  /** One optimizer step on a batch (skipped, but counted, when no token is masked in). */
  async trainBatch(batch: ActivationBatch): Promise<StepResult> {
    const tokens = OnnxTrainer.tokensOf(batch);
    const lr = learningRateAt(this.step, this.options);
    const r = await this.run(batch, tokens, lr, false);
    this.step += 1;
    return { loss: tokens > 0 ? r.lossSum / tokens : 0, learningRate: lr, step: this.step, tokens, skipped: r.skipped ?? false };
  }

  /** Gradients of the batch's mean masked loss, without a step (for the gradient checks). */
  async gradients(batch: ActivationBatch): Promise<Map<string, Float32Array>> {
    return (await this.run(batch, OnnxTrainer.tokensOf(batch), 0, true)).grads!;
  }

  private async run(batch: ActivationBatch, tokens: number, lr: number, gradientsOnly: boolean): Promise<{ lossSum: number; grads?: Map<string, Float32Array>; skipped?: boolean }> {
    const [, , , stepSession, evalSession] = await this.sessions();
    const { feeds, z, m, s, acc, u, accB, kept } = await this.headPass(batch, true);
    const loss = this.lossFeeds(batch, m, s, z, u);
    if (tokens === 0) return { lossSum: Number((await evalSession.run(loss.eval)).loss_sum!.data[0]) };
    const n = batch.rows;
    const weights = f32(Float32Array.from(batch.mask, (x) => x / tokens), [n, 1]);
    // With a head update, the softmax rows are acc + acc_b A^T (HeadUpdate.ts).
    const softmaxRows = u ? f32(this.headUpdate.addLifted(acc!.data as Float32Array, accB!.data as Float32Array, this.params.get('head_a')!), [n, this.shape.d]) : acc!;
    const feeds2: Feeds = { ...feeds, ...loss.eval, acc: softmaxRows, target_rows: loss.targetRows, weights };
    const headGrads = u ? await this.headGradients(batch, z, u, accB!, m, s, weights, kept) : undefined;
    if (gradientsOnly) {
      const order = ladderParameterNames(this.shape);
      const out = await this.stepOutputs(stepSession, feeds2, 0, ['loss_sum', ...order.map(names.grad)]);
      const grads = new Map(order.map((p) => [p, out[names.grad(p)]!.data as Float32Array]));
      for (const [p, g] of headGrads ?? []) grads.set(p, g);
      return { lossSum: Number(out.loss_sum!.data[0]), grads };
    }
    const out = await this.stepOutputs(stepSession, feeds2, lr, ['loss_sum']);
    const lossSum = Number(out.loss_sum!.data[0]);
    if (!Number.isFinite(lossSum) || !Number.isFinite(Number(out.grad_norm!.data[0]))) return { lossSum, skipped: true };
    if (headGrads && !HeadUpdate.adam(headGrads, this.params, { m: this.m, v: this.v }, lr, this.step + 1, this.constants)) return { lossSum, skipped: true };
    this.adopt(out);
    return { lossSum };
  }

  /**
   * The head update's gradients (HeadUpdate.ts): B's softmax part chunk by
   * chunk from the train pass's kept e (f = weight exp(m_chunk - m) / s per
   * token turns it into the final softmax), then the targets' part and A's.
   */
  private async headGradients(batch: ActivationBatch, z: ort.Tensor, u: Float32Array, accB: ort.Tensor, m: ort.Tensor, s: ort.Tensor, weights: ort.Tensor, kept: KeptChunk[]): Promise<Map<string, Float32Array>> {
    const k = this.headUpdate.rank;
    const n = batch.rows;
    const session = await this.engine.session(`head-grad-k${k}`, () => buildHeadChunkGrad(k), this);
    const b = this.params.get('head_b')!;
    const softmaxPart = new Float32Array(b.length);
    const [mFinal, sFinal, w] = [m.data as Float32Array, s.data as Float32Array, weights.data as Float32Array];
    const fu = new Float32Array(n * k);
    for (const [c, chunk] of kept.entries()) {
      for (let t = 0; t < n; t++) {
        const f = w[t] === 0 ? 0 : (w[t]! * Math.exp(chunk.m[t]! - mFinal[t]!)) / sFinal[t]!;
        for (let j = 0; j < k; j++) fu[t * k + j] = f * u[t * k + j]!;
      }
      const out = await session.run({ e_half: chunk.eHalf, fu: f32(fu, [n, k]) });
      softmaxPart.set(out.grad_b!.data as Float32Array, this.frozenHead.starts[c]! * k);
    }
    const g = this.headUpdate.gradients(z.data as Float32Array, u, accB.data as Float32Array, s.data as Float32Array, this.headUpdate.targetRows(b, batch.targets), batch.targets, weights.data as Float32Array, softmaxPart);
    return new Map([['head_a', g.a], ['head_b', g.b]]);
  }

  /** Held-out evaluation with the current weights (no update). */
  async evalBatch(batch: ActivationBatch): Promise<{ lossSum: number; tokens: number }> {
    const [, , , , evalSession] = await this.sessions();
    const { z, m, s, u } = await this.headPass(batch, false);
    const out = await evalSession.run(this.lossFeeds(batch, m, s, z, u).eval);
    return { lossSum: Number(out.loss_sum!.data[0]), tokens: OnnxTrainer.tokensOf(batch) };
  }

  /** This trainer's sessions may go (the engine keeps a few idle ones for the next job of the same shape). */
  dispose(): void {
    this.engine.letGo(this);
  }

  /** Replaces some parameters' starting values (a job initialised from the backbone's weights); before the first step only. */
  setStartValues(values: Map<string, Float32Array>): void {
    if (this.step !== 0) throw new Error('start values are set before the first step');
    for (const [p, data] of values) {
      const want = this.params.get(p);
      if (!want || want.length !== data.length) throw new Error(`no parameter ${p} of ${data.length} values`);
      this.params.set(p, Float32Array.from(data));
    }
  }

  /** Current parameter values (for checkpoints and the adapter file). */
  values(): Map<string, Float32Array> {
    return new Map(this.params);
  }

  exportState(): OptimizerState {
    return { step: this.step, m: new Map(this.m), v: new Map(this.v) };
  }
}
