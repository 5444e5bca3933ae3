import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { encodeHalf } from '../../../common/float16';
import { HEAD_CHUNK_BYTES } from '../../../common/limits';
import { yieldToEventLoop } from '../../../common/sliced';
import type { Backbone } from '../model/Backbone';

/**
 * The backbone's final norm weight as float32: [d] (then, for a LayerNorm,
 * its bias: [2d]), times the model's logit multiplier (headDescription.ts),
 * so that W (norm(y)) gives the logits llama.cpp gives.
 */
export async function headNorm(backbone: Backbone): Promise<Float32Array> {
  let w = (await backbone.readTensor('output_norm.weight')).data;
  if (backbone.info.head.norm === 'layer') {
    const both = new Float32Array(2 * w.length);
    both.set(w);
    both.set((await backbone.readTensor('output_norm.bias')).data, w.length);
    w = both;
  }
  const s = backbone.info.head.logitMultiplier;
  if (s !== 1) for (let i = 0; i < w.length; i++) w[i]! *= s;
  return w;
}

/** Values converted to float16 between two turns of the event loop (a few milliseconds of work). */
const HALF_SLICE_VALUES = 256 * 1024;

/**
 * The head's rows as float16, in chunks of about HEAD_CHUNK_BYTES, in row
 * order (what the server receives). Each chunk is read and dequantized off
 * the JavaScript thread (readTensor runs on libuv's pool) and converted in
 * slices of HALF_SLICE_VALUES, the event loop free between them.
 */
export async function* headChunks(backbone: Backbone): AsyncGenerator<{ rowStart: number; rowCount: number; halves: Uint16Array }> {
  const d = backbone.info.hiddenSize;
  const rows = backbone.info.vocabularySize;
  const perChunk = Math.max(1, Math.floor(HEAD_CHUNK_BYTES / (2 * d)));
  for (let rowStart = 0; rowStart < rows; rowStart += perChunk) {
    const rowCount = Math.min(perChunk, rows - rowStart);
    const t = await backbone.readTensor(backbone.info.headTensor, rowStart, rowCount); // [rowCount, d]
    const halves = new Uint16Array(rowCount * d);
    for (let at = 0; at < t.data.length; at += HALF_SLICE_VALUES) {
      halves.set(encodeHalf(t.data.subarray(at, Math.min(t.data.length, at + HALF_SLICE_VALUES))), at);
      await yieldToEventLoop();
    }
    yield { rowStart, rowCount, halves };
  }
}

/**
 * sha256 of the head upload's content (the f32 norm, then the f16 rows in
 * order), computed from the model file, once per model: cached in
 * `<store>/heads/<fingerprint>.json`. The server keeps and verifies heads
 * under it, so no one else's upload can stand in for this model's head.
 */
export async function headDigest(backbone: Backbone, fingerprint: string, storeDir: string): Promise<string> {
  const cache = path.join(storeDir, 'heads', `${fingerprint}.json`);
  try {
    const { headDigest: cached } = JSON.parse(fs.readFileSync(cache, 'utf8')) as { headDigest?: unknown };
    if (typeof cached === 'string' && /^[0-9a-f]{64}$/.test(cached)) return cached;
  } catch {
    // not computed yet on this device
  }
  const hash = createHash('sha256');
  const norm = await headNorm(backbone);
  hash.update(new Uint8Array(norm.buffer, norm.byteOffset, norm.byteLength));
  for await (const c of headChunks(backbone)) hash.update(new Uint8Array(c.halves.buffer, c.halves.byteOffset, c.halves.byteLength));
  const digest = hash.digest('hex');
  writeFileAtomic(cache, `${JSON.stringify({ headDigest: digest })}\n`);
  return digest;
}
