import type { JobConfig } from '../../common/messages';
import { HEAD_CHUNK_ROWS } from './onnx/OnnxHead';
import { attentionBlocks, attentionHeadsOf, parameterCount, SideNetworkShape } from '../../common/AdapterConfig';

/** Bytes of a float32. */
const F32 = 4;
/** Headroom over the terms below, for what they do not name (ONNX Runtime's arena, Node's heap); bench:job-memory checks it. */
const MARGIN = 1.25;

/**
 * An upper estimate of the memory one loaded job takes while it trains, from
 * its config alone (so a job can be refused before anything is allocated), in
 * float32 values, times MARGIN:
 *   parameters, gradients, Adam's moments, the step's updated
 *   copies and a checkpoint's encoding                        10 x P
 *   a decoded batch and the graph's copy of it                 2 x rows x K x d
 *   per-block intermediates of forward and backward           12 x rows x K x max(r, b), 4 x rows x d
 *   attention blocks (side network 2): padded heads, RoPE,
 *   their gradients                                           32 x rows x A x r
 *   attention scores and their gradient                        2 x B x heads x T^2 per attention block
 *   the head's logits and their gradient, one chunk at a time 2 x rows x HEAD_CHUNK_ROWS (standard mode)
 *   with a head update: each chunk's softmax kept as float16   rows x vocabulary / 2
 *   and B's gradient pass over them                           2 x rows x HEAD_CHUNK_ROWS more (its own session)
 *   a head chunk cast to float32, in each head session         2 x HEAD_CHUNK_ROWS x d
 * rows = seqLen x batchSize, K tapped layers, A attention blocks. The model's
 * head is shared by every job of that model and is not counted here. `shape`
 * is the job's (jobShape of its config), computed once by whoever admits it.
 * Measured against real jobs by `npm run bench:job-memory` (README).
 */
export function jobMemoryBytes(config: JobConfig, shape: SideNetworkShape): number {
  const { d, r, b } = shape;
  const K = shape.tappedLayers.length;
  const A = attentionBlocks(shape);
  const rows = config.seqLen * config.batchSize;
  const P = parameterCount(shape);
  const { attentionHeads } = attentionHeadsOf(shape);
  const scores = A * config.batchSize * attentionHeads * config.seqLen * config.seqLen;
  const kept = shape.headRank && shape.vocab ? (rows * shape.vocab) / 2 : 0;
  const logits = config.labelPrivate ? 0 : (config.headRank ? 4 : 2) * rows * HEAD_CHUNK_ROWS + 2 * HEAD_CHUNK_ROWS * d + kept;
  const values = 10 * P + 2 * rows * K * d + 12 * rows * K * Math.max(r, b) + 4 * rows * d + 32 * rows * A * r + 2 * scores + logits;
  return Math.ceil(MARGIN * F32 * values);
}

/** What a job's files hold besides the weights: adapter headers, the job's record, its held-out results. */
const HEADERS_AND_RECORD_BYTES = 256 * 1024;

/**
 * The disk one job takes at most: two checkpoints (weights and Adam's two
 * moments, float32) and the adapter (weights), plus headers and the record.
 */
export function jobDiskBytes(shape: SideNetworkShape): number {
  return F32 * 7 * parameterCount(shape) + HEADERS_AND_RECORD_BYTES;
}
