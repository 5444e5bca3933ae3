import { encodeHalf } from '../../../common/float16';
import { HEAD_CHUNK_BYTES } from '../../../common/limits';
import type { Backbone } from '../Backbone';
import type { ServerConnection } from '../ServerConnection';
import type { JobContext } from './JobContext';

/**
 * Sends the backbone's final norm (f32) and head (f16, in chunks of about
 * HEAD_CHUNK_BYTES) to a server that lacks them for this model file; the
 * server stores them under the model's fingerprint. Public model weights only.
 */
export async function uploadHead(conn: ServerConnection, backbone: Backbone, ctx: JobContext): Promise<void> {
  ctx.setPhase('uploading-head');
  const d = backbone.info.hiddenSize;
  const rows = backbone.info.vocabularySize;
  const norm = await backbone.readTensor('output_norm.weight'); // [d]
  conn.send({ type: 'head/begin', rows, cols: d }, new Uint8Array(norm.data.buffer, norm.data.byteOffset, norm.data.byteLength));
  const perChunk = Math.max(1, Math.floor(HEAD_CHUNK_BYTES / (2 * d)));
  for (let start = 0; start < rows; start += perChunk) {
    ctx.checkCancelled();
    const count = Math.min(perChunk, rows - start);
    const t = await backbone.readTensor(backbone.info.headTensor, start, count); // [count, d]
    conn.send({ type: 'head/chunk', rowStart: start, rowCount: count }, new Uint8Array(encodeHalf(t.data).buffer));
  }
  await conn.request({ type: 'head/end' }, 'head/stored');
  ctx.log('model head uploaded');
}
