import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { encodeHalf } from '../../../common/float16';
import { HEAD_CHUNK_BYTES } from '../../../common/limits';
import type { Backbone } from '../model/Backbone';

/** The backbone's final norm weight as float32: [d]. */
export async function headNorm(backbone: Backbone): Promise<Float32Array> {
  return (await backbone.readTensor('output_norm.weight')).data;
}

/** The head's rows as float16, in chunks of about HEAD_CHUNK_BYTES, in row order (what the server receives). */
export async function* headChunks(backbone: Backbone): AsyncGenerator<{ rowStart: number; rowCount: number; halves: Uint16Array }> {
  const d = backbone.info.hiddenSize;
  const rows = backbone.info.vocabularySize;
  const perChunk = Math.max(1, Math.floor(HEAD_CHUNK_BYTES / (2 * d)));
  for (let rowStart = 0; rowStart < rows; rowStart += perChunk) {
    const rowCount = Math.min(perChunk, rows - rowStart);
    const t = await backbone.readTensor(backbone.info.headTensor, rowStart, rowCount); // [rowCount, d]
    yield { rowStart, rowCount, halves: encodeHalf(t.data) };
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
