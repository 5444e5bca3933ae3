import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from '../../extension/core/model/tinyModel';
import { GgmlTypeName } from '../../extension/core/model/gguf/ggmlTypes';
import { QuantizedLayout, quantizeModel } from '../../extension/core/model/quantizeModel';

/** Cache for generated benchmark models (outside git). */
export const BENCH_CACHE = path.resolve(__dirname, '..', '..', '..', 'bench', '.cache');
export const QWEN2_VOCAB = path.resolve(__dirname, '..', '..', '..', 'build', 'llama.cpp', 'models', 'ggml-vocab-qwen2.gguf');

/**
 * A Qwen2.5-0.5B-shaped llama model with random weights: 24 layers, d=896,
 * 14 query / 2 key-value heads, ff 4864, the real Qwen2 vocabulary (151,936
 * tokens), tied head. Generated once and cached.
 */
export function qwenShapedModel(type: GgmlTypeName): string {
  const out = path.join(BENCH_CACHE, `qwen2.5-0.5b-shape-${type}.gguf`);
  if (!fs.existsSync(out)) {
    fs.mkdirSync(BENCH_CACHE, { recursive: true });
    process.stderr.write(`generating ${path.basename(out)} (once) ...\n`);
    writeTinyModel({ out, layers: 24, embd: 896, heads: 14, kvHeads: 2, ff: 4864, type, vocab: QWEN2_VOCAB, untiedHead: false, contextLength: 32768, seed: 11 });
  }
  return out;
}

/**
 * A Qwen2.5-Coder-1.5B-shaped qwen2 model with random weights (28 layers,
 * d=1536, 12 query / 2 key-value heads, ff 8960, the real Qwen2 vocabulary,
 * tied head), written in float16 and rewritten by llama.cpp's quantizer into
 * `layout`, as users download it. Generated once and cached (the float16
 * source, 3.1 GB, is removed once quantized).
 */
export async function qwenCoder15Model(layout: QuantizedLayout): Promise<string> {
  const out = path.join(BENCH_CACHE, `qwen2.5-coder-1.5b-shape-${layout}.gguf`);
  if (!fs.existsSync(out)) {
    fs.mkdirSync(BENCH_CACHE, { recursive: true });
    const source = path.join(BENCH_CACHE, 'qwen2.5-coder-1.5b-shape-f16.gguf');
    process.stderr.write(`generating ${path.basename(out)} (once: float16, then llama.cpp's quantizer) ...\n`);
    if (!fs.existsSync(source)) writeTinyModel({ out: source, architecture: 'qwen2', layers: 28, embd: 1536, heads: 12, kvHeads: 2, ff: 8960, type: 'f16', vocab: QWEN2_VOCAB, untiedHead: false, contextLength: 32768, seed: 15 });
    await quantizeModel(source, out, layout);
    fs.rmSync(source);
  }
  return out;
}

/** Peak resident set size of this process (VmHWM), in bytes. */
export function peakRssBytes(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

/** A one-line description of this machine for results files. */
export function machineDescription(): Record<string, unknown> {
  const os = require('node:os') as typeof import('node:os');
  return { cpu: os.cpus()[0]?.model, cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, platform: `${process.platform}-${process.arch}` };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
