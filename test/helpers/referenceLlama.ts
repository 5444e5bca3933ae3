import * as fs from 'node:fs';
import { GgufFile, ggufNumber, readGgufFile } from '../../extension/core/model/gguf/GgufFile';
import { GgmlType } from '../../extension/core/model/gguf/ggmlTypes';
import { fromHalf } from '../../common/float16';

/**
 * An independent llama forward pass in plain TypeScript (float64), for F32
 * GGUF files: RMSNorm, attention with GQA and llama.cpp's "normal" RoPE
 * (adjacent pairs), SwiGLU feed-forward. Returns every layer's residual output
 * (what llama.cpp names `l_out-<i>`) for every token of one sequence.
 */
export class ReferenceLlama {
  private readonly tensors = new Map<string, Float64Array>();
  readonly nLayer: number;
  readonly d: number;
  readonly nHead: number;
  readonly nKv: number;
  readonly eps: number;
  readonly ropeBase: number;

  constructor(path: string) {
    const f: GgufFile = readGgufFile(path);
    const fd = fs.openSync(path, 'r');
    for (const t of f.tensors) {
      if (t.type !== GgmlType.F32 && t.type !== GgmlType.F16) throw new Error(`reference forward needs an F32 or F16 model (${t.name})`);
      const n = t.shape.reduce((a, b) => a * b, 1);
      const width = t.type === GgmlType.F32 ? 4 : 2;
      const buf = Buffer.alloc(n * width);
      fs.readSync(fd, buf, 0, buf.length, f.dataOffset + t.offset);
      const out = new Float64Array(n);
      for (let i = 0; i < n; i++) out[i] = width === 4 ? buf.readFloatLE(i * 4) : fromHalf(buf.readUInt16LE(i * 2));
      this.tensors.set(t.name, out);
    }
    fs.closeSync(fd);
    this.nLayer = ggufNumber(f, 'llama.block_count')!;
    this.d = ggufNumber(f, 'llama.embedding_length')!;
    this.nHead = ggufNumber(f, 'llama.attention.head_count')!;
    this.nKv = ggufNumber(f, 'llama.attention.head_count_kv') ?? this.nHead;
    this.eps = ggufNumber(f, 'llama.attention.layer_norm_rms_epsilon')!;
    this.ropeBase = ggufNumber(f, 'llama.rope.freq_base') ?? 10000;
  }

  private w(name: string): Float64Array {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`missing tensor ${name}`);
    return t;
  }

  private rmsNorm(x: Float64Array, weight: Float64Array): Float64Array {
    let ss = 0;
    for (const v of x) ss += v * v;
    const scale = 1 / Math.sqrt(ss / x.length + this.eps);
    return x.map((v, i) => v * scale * weight[i]!);
  }

  /** y = W x with W stored [rows][cols] (ggml shape [cols, rows]). */
  private matvec(W: Float64Array, x: Float64Array, rows: number): Float64Array {
    const cols = x.length;
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      const base = r * cols;
      for (let c = 0; c < cols; c++) s += W[base + c]! * x[c]!;
      y[r] = s;
    }
    return y;
  }

  private rope(v: Float64Array, heads: number, hd: number, pos: number): void {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < hd / 2; i++) {
        const theta = pos * Math.pow(this.ropeBase, (-2 * i) / hd);
        const c = Math.cos(theta);
        const s = Math.sin(theta);
        const a = v[h * hd + 2 * i]!;
        const b = v[h * hd + 2 * i + 1]!;
        v[h * hd + 2 * i] = a * c - b * s;
        v[h * hd + 2 * i + 1] = a * s + b * c;
      }
    }
  }

  /** layers[i][t] = output of layer i at token t. */
  forward(tokens: ArrayLike<number>): Float64Array[][] {
    const { d, nHead, nKv } = this;
    const hd = d / nHead;
    const T = tokens.length;
    const emb = this.w('token_embd.weight');
    let xs: Float64Array[] = [];
    for (let t = 0; t < T; t++) xs.push(emb.slice(tokens[t]! * d, (tokens[t]! + 1) * d));
    const out: Float64Array[][] = [];
    for (let il = 0; il < this.nLayer; il++) {
      const p = `blk.${il}.`;
      const qs: Float64Array[] = [];
      const ks: Float64Array[] = [];
      const vs: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const h = this.rmsNorm(xs[t]!, this.w(`${p}attn_norm.weight`));
        const q = this.matvec(this.w(`${p}attn_q.weight`), h, d);
        const k = this.matvec(this.w(`${p}attn_k.weight`), h, nKv * hd);
        const v = this.matvec(this.w(`${p}attn_v.weight`), h, nKv * hd);
        this.rope(q, nHead, hd, t);
        this.rope(k, nKv, hd, t);
        qs.push(q);
        ks.push(k);
        vs.push(v);
      }
      const next: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const attn = new Float64Array(d);
        for (let h = 0; h < nHead; h++) {
          const kh = Math.floor(h / (nHead / nKv));
          const scores = new Float64Array(t + 1);
          let max = -Infinity;
          for (let u = 0; u <= t; u++) {
            let s = 0;
            for (let i = 0; i < hd; i++) s += qs[t]![h * hd + i]! * ks[u]![kh * hd + i]!;
            scores[u] = s / Math.sqrt(hd);
            max = Math.max(max, scores[u]!);
          }
          let sum = 0;
          for (let u = 0; u <= t; u++) {
            scores[u] = Math.exp(scores[u]! - max);
            sum += scores[u]!;
          }
          for (let u = 0; u <= t; u++) {
            for (let i = 0; i < hd; i++) attn[h * hd + i] += (scores[u]! / sum) * vs[u]![kh * hd + i]!;
          }
        }
        const o = this.matvec(this.w(`${p}attn_output.weight`), attn, d);
        const x1 = xs[t]!.map((v, i) => v + o[i]!);
        const h2 = this.rmsNorm(x1, this.w(`${p}ffn_norm.weight`));
        const ffLen = this.w(`${p}ffn_gate.weight`).length / d;
        const g = this.matvec(this.w(`${p}ffn_gate.weight`), h2, ffLen);
        const u = this.matvec(this.w(`${p}ffn_up.weight`), h2, ffLen);
        const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
        const f = this.matvec(this.w(`${p}ffn_down.weight`), act, d);
        next.push(x1.map((v, i) => v + f[i]!));
      }
      xs = next;
      out.push(xs);
    }
    return out;
  }
}
