/**
 * Pretraining of the stand-in (issue 37) on ONNX Runtime's CPU kernels: the
 * step graph of ./pretrainGraph.ts, AdamW with decoupled weight decay on the
 * matrices, clipping by the global gradient norm, and a learning rate that
 * warms up linearly and then decays along a cosine. Parameters and both
 * moments live here as float32 arrays; a checkpoint holds them with the step,
 * so a killed run resumes where its last checkpoint left it.
 */
import * as fs from 'node:fs';
import { ort } from '../../../server/training/onnx/ort';
import { SeededRandom } from '../../../common/SeededRandom';
import { EMBEDDING_ROWS, ParamSpec, paramSpecs, pretrainGraph, PretrainShape } from './pretrainGraph';

/** How the stand-in is pretrained. */
export interface PretrainSettings {
  /** Windows per step. */
  batch: number;
  /** Tokens per window (the first input is BOS). */
  window: number;
  peakLr: number;
  /** Steps of the linear warm-up from 0 to peakLr. */
  warmupSteps: number;
  /** The rate at the last step, as a share of peakLr (cosine decay between). */
  finalLrRatio: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  /** The global gradient norm is clipped to this. */
  clipNorm: number;
  /** Seeds the initial weights and the order of the windows. */
  seed: number;
}

/** The learning rate of step `step` (0-based) of `total`. */
export function learningRate(s: PretrainSettings, step: number, total: number): number {
  if (step < s.warmupSteps) return (s.peakLr * (step + 1)) / s.warmupSteps;
  const t = Math.min(1, (step - s.warmupSteps) / Math.max(1, total - s.warmupSteps));
  return s.peakLr * (s.finalLrRatio + (1 - s.finalLrRatio) * 0.5 * (1 + Math.cos(Math.PI * t)));
}

/** GPT-2's initialisation: N(0, 0.02) matrices, the residual branches' outputs scaled by 1/sqrt(2 layers), norms at 1. */
export function initialWeights(shape: PretrainShape, seed: number): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  paramSpecs(shape).forEach((spec, i) => {
    const values = new Float32Array(spec.dims.reduce((a, b) => a * b, 1));
    if (!spec.decay) values.fill(1);
    else {
      const rng = new SeededRandom((seed * 1000003 + (i + 1) * 7919) >>> 0);
      const std = /attn_output|ffn_down/.test(spec.name) ? 0.02 / Math.sqrt(2 * shape.layers) : 0.02;
      for (let j = 0; j < values.length; j++) values[j] = rng.normal() * std;
    }
    out.set(spec.name, values);
  });
  return out;
}

const CHECKPOINT_MAGIC = 'mobillm-pretrain-1';

export class Pretrainer {
  private readonly specs: ParamSpec[];
  private readonly m: Map<string, Float32Array>;
  private readonly v: Map<string, Float32Array>;
  /** Optimizer steps taken. */
  step = 0;

  private constructor(
    readonly shape: PretrainShape,
    readonly settings: PretrainSettings,
    readonly params: Map<string, Float32Array>,
    private readonly train: ort.InferenceSession,
    private readonly lossOnly: ort.InferenceSession,
  ) {
    this.specs = paramSpecs(shape);
    this.m = new Map(this.specs.map((s) => [s.name, new Float32Array(params.get(s.name)!.length)]));
    this.v = new Map(this.specs.map((s) => [s.name, new Float32Array(params.get(s.name)!.length)]));
  }

  /** A trainer starting from `params` (initialWeights by default). */
  static async create(shape: PretrainShape, settings: PretrainSettings, threads: number, params?: Map<string, Float32Array>): Promise<Pretrainer> {
    const options: ort.InferenceSession.SessionOptions = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
    const train = await ort.InferenceSession.create(pretrainGraph(shape, settings.batch, settings.window, true), options);
    const lossOnly = await ort.InferenceSession.create(pretrainGraph(shape, settings.batch, settings.window, false), options);
    return new Pretrainer(shape, settings, params ?? initialWeights(shape, settings.seed), train, lossOnly);
  }

  private feeds(ids: BigInt64Array, targets: BigInt64Array): Record<string, ort.Tensor> {
    const { batch: B, window: T } = this.settings;
    const feeds: Record<string, ort.Tensor> = {
      ids: new ort.Tensor('int64', ids, [B, T]),
      targets: new ort.Tensor('int64', targets, [B * T]),
    };
    for (const s of this.specs) feeds[s.name] = new ort.Tensor('float32', this.params.get(s.name)!, s.dims);
    return feeds;
  }

  /** Mean cross-entropy of one batch (`ids` [B, T], `targets` [B * T]) with the current weights. */
  async loss(ids: BigInt64Array, targets: BigInt64Array): Promise<number> {
    const out = await this.lossOnly.run(this.feeds(ids, targets));
    return (out.loss!.data as Float32Array)[0]!;
  }

  /** The loss and every parameter's gradient for one batch, without a step. */
  async gradients(ids: BigInt64Array, targets: BigInt64Array): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const out = await this.train.run(this.feeds(ids, targets));
    const grads = new Map<string, Float32Array>();
    for (const s of this.specs) if (s.name !== 'token_embd.weight') grads.set(s.name, out[`d:${s.name}`]!.data as Float32Array);
    // The embedding's gradient: each token's row added into its id's row.
    const d = this.shape.embd;
    const rows = out[EMBEDDING_ROWS]!.data as Float32Array;
    const dEmb = new Float32Array(this.params.get('token_embd.weight')!.length);
    for (let i = 0; i < ids.length; i++) {
      const at = Number(ids[i]) * d;
      for (let j = 0; j < d; j++) dEmb[at + j]! += rows[i * d + j]!;
    }
    grads.set('token_embd.weight', dEmb);
    return { loss: (out.loss!.data as Float32Array)[0]!, grads };
  }

  /** One AdamW step on one batch at rate `lr`; returns the batch's loss before the step and the gradient's norm before clipping. */
  async trainStep(ids: BigInt64Array, targets: BigInt64Array, lr: number): Promise<{ loss: number; gradNorm: number }> {
    const { loss, grads } = await this.gradients(ids, targets);
    let sq = 0;
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
    const gradNorm = Math.sqrt(sq);
    const s = this.settings;
    const clip = gradNorm > s.clipNorm ? s.clipNorm / gradNorm : 1;
    this.step++;
    const c1 = 1 - Math.pow(s.beta1, this.step);
    const c2 = 1 - Math.pow(s.beta2, this.step);
    for (const spec of this.specs) {
      const p = this.params.get(spec.name)!;
      const g = grads.get(spec.name)!;
      const m = this.m.get(spec.name)!;
      const v = this.v.get(spec.name)!;
      const decay = spec.decay ? 1 - lr * s.weightDecay : 1;
      for (let i = 0; i < p.length; i++) {
        const gi = g[i]! * clip;
        const mi = s.beta1 * m[i]! + (1 - s.beta1) * gi;
        const vi = s.beta2 * v[i]! + (1 - s.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i]! * decay - (lr * (mi / c1)) / (Math.sqrt(vi / c2) + 1e-8);
      }
    }
    return { loss, gradNorm };
  }

  /** Writes weights, both moments and the step to `file` (atomically: a temporary file, then a rename). */
  save(file: string, extra: Record<string, unknown>): void {
    const header = Buffer.from(JSON.stringify({ magic: CHECKPOINT_MAGIC, step: this.step, shape: this.shape, settings: this.settings, extra }));
    const fd = fs.openSync(`${file}.tmp`, 'w');
    try {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(header.length);
      fs.writeSync(fd, len);
      fs.writeSync(fd, header);
      for (const spec of this.specs) {
        for (const arr of [this.params, this.m, this.v]) {
          const a = arr.get(spec.name)!;
          fs.writeSync(fd, new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
        }
      }
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(`${file}.tmp`, file);
  }

  /** Restores a checkpoint written by `save` with the same shape and settings; returns its `extra`. */
  restore(file: string): Record<string, unknown> {
    const buf = fs.readFileSync(file);
    const len = buf.readUInt32LE(0);
    const header = JSON.parse(buf.subarray(4, 4 + len).toString('utf8')) as { magic: string; step: number; shape: PretrainShape; settings: PretrainSettings; extra: Record<string, unknown> };
    if (header.magic !== CHECKPOINT_MAGIC) throw new RangeError(`${file} is not a pretraining checkpoint`);
    if (JSON.stringify(header.shape) !== JSON.stringify(this.shape) || JSON.stringify(header.settings) !== JSON.stringify(this.settings)) {
      throw new RangeError(`${file} was written for another shape or other settings; delete it to start again`);
    }
    let at = 4 + len;
    for (const spec of this.specs) {
      for (const arr of [this.params, this.m, this.v]) {
        const a = arr.get(spec.name)!;
        new Uint8Array(a.buffer, a.byteOffset, a.byteLength).set(buf.subarray(at, at + a.byteLength));
        at += a.byteLength;
      }
    }
    if (at !== buf.length) throw new RangeError(`${file} has ${buf.length - at} bytes more than its header says`);
    this.step = header.step;
    return header.extra;
  }

  async dispose(): Promise<void> {
    await this.train.release();
    await this.lossOnly.release();
  }
}
