import type { Backbone } from '../model/Backbone';
import type { ServerConnection } from '../connection/ServerConnection';
import { headChunks, headNorm } from './headContent';
import type { JobContext } from './JobContext';

/**
 * Sends the backbone's final norm (f32) and head (f16, in chunks) to a server
 * that lacks them for this model and head digest; the server verifies them
 * against the digest and stores them. Public model weights only.
 */
export async function uploadHead(conn: ServerConnection, backbone: Backbone, ctx: JobContext): Promise<void> {
  ctx.setPhase('uploading-head');
  const norm = await headNorm(backbone); // [d], or [2d] with a LayerNorm's bias
  conn.send({ type: 'head/begin', rows: backbone.info.vocabularySize, cols: backbone.info.hiddenSize }, new Uint8Array(norm.buffer, norm.byteOffset, norm.byteLength));
  for await (const c of headChunks(backbone)) {
    ctx.checkCancelled();
    // One part in flight at a time: the head (hundreds of MB in f16) never queues up in this process.
    await conn.sendFlushed({ type: 'head/chunk', rowStart: c.rowStart, rowCount: c.rowCount }, new Uint8Array(c.halves.buffer, c.halves.byteOffset, c.halves.byteLength));
  }
  await conn.request({ type: 'head/end' });
  ctx.log('model head uploaded');
}
