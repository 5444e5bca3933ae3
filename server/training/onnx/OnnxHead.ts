import * as ort from 'onnxruntime-node';
import { OnnxEngine } from './OnnxEngine';
import { buildHeadChunk } from './sideGraphs';

/** Rows of the head per chunk: bounds the [tokens, chunk] logits (64 MiB at 1,024 tokens). */
export const HEAD_CHUNK_ROWS = 16_384;

/** What one pass over the head leaves: the online log-sum-exp and the rows the loss and its gradient need. */
export interface HeadPass {
  m: ort.Tensor; // [n, 1] running max of the logits
  s: ort.Tensor; // [n, 1] sum of exp(logit - m)
  acc: ort.Tensor; // [n, d] sum of exp(logit - m) W_v
  wt: ort.Tensor; // [n, d] the head rows of the targets
}

const f32 = (data: Float32Array, dims: number[]): ort.Tensor => new ort.Tensor('float32', data, dims);

/**
 * A model's frozen final norm and head, resident once per (model, head
 * digest). The head stays in float16, as the device uploaded it (2 bytes per
 * weight: 272 MiB for Qwen2.5-0.5B's 151,936 x 896), inside the head-chunk
 * graphs as constants, one session per chunk of HEAD_CHUNK_ROWS rows (each
 * chunk is cast to float32 per run). The float16 data never crosses into
 * JavaScript tensors: onnxruntime-node's float16 inputs fail on Node 24+
 * (Float16Array reports zero bytes; microsoft/onnxruntime#32323), and VS
 * Code's extension host runs the embedded server on such a runtime. The
 * sessions run without graph optimisation, which would fold the cast and
 * keep a float32 copy of the head.
 */
export class OnnxHead {
  readonly vocab: number;
  readonly norm: ort.Tensor; // float32 [d]
  readonly epsTensor: ort.Tensor; // float32 []
  private sessions: Promise<ort.InferenceSession[]> | undefined;
  private halves: Uint16Array | undefined;

  /** halves: [vocab][d] float16 bits; normWeight: [d]. */
  constructor(private readonly engine: OnnxEngine, halves: Uint16Array, normWeight: Float32Array, readonly eps: number, private readonly chunkRows = HEAD_CHUNK_ROWS) {
    const d = normWeight.length;
    this.vocab = halves.length / d;
    this.halves = halves;
    this.norm = f32(normWeight, [d]);
    this.epsTensor = f32(Float32Array.of(eps), []);
  }

  get d(): number {
    return this.norm.dims[0]!;
  }

  /** Bytes of the head as the engine holds it (float16 weights and the float32 norm). */
  get bytes(): number {
    return this.vocab * this.d * 2 + this.d * 4;
  }

  private chunkSessions(): Promise<ort.InferenceSession[]> {
    this.sessions ??= (async () => {
      const halves = this.halves!;
      const d = this.d;
      const out: ort.InferenceSession[] = [];
      for (let start = 0; start < this.vocab; start += this.chunkRows) {
        const rows = Math.min(this.chunkRows, this.vocab - start);
        out.push(await this.engine.createSession(buildHeadChunk(d, start, halves.subarray(start * d, (start + rows) * d)), false));
      }
      this.halves = undefined; // the sessions hold the head now
      return out;
    })();
    return this.sessions;
  }

  /** One pass over every chunk for hidden states z [n, d] and their target ids. */
  async pass(z: ort.Tensor, targets: Int32Array): Promise<HeadPass> {
    const n = targets.length;
    const d = this.d;
    let state: HeadPass = {
      m: f32(new Float32Array(n).fill(-Infinity), [n, 1]),
      s: f32(new Float32Array(n), [n, 1]),
      acc: f32(new Float32Array(n * d), [n, d]),
      wt: f32(new Float32Array(n * d), [n, d]),
    };
    const ids = f32(Float32Array.from(targets), [n]);
    for (const session of await this.chunkSessions()) {
      const out = await session.run({ z, m: state.m, s: state.s, acc: state.acc, wt: state.wt, targets: ids });
      state = { m: out.next_m!, s: out.next_s!, acc: out.next_acc!, wt: out.next_wt! };
    }
    return state;
  }

  async dispose(): Promise<void> {
    const sessions = this.sessions;
    this.sessions = undefined;
    this.halves = undefined;
    for (const s of sessions ? await sessions : []) await s.release();
  }
}
