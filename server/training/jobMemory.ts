import type { JobConfig, ModelSpec } from '../../common/messages';
import { HEAD_CHUNK_ROWS } from './onnx/OnnxHead';
import { attentionBlocks, attentionHeadsOf, parameterNames, parameterShape } from './sideNetworkSpec';
import { jobShape } from '../../common/AdapterConfig';

/** Bytes of a float32. */
const F32 = 4;

/**
 * An upper estimate of the memory one loaded job takes while it trains, from
 * its config alone (so a job can be refused before anything is allocated):
 *   parameters, their gradients and Adam's two moments       4 x P
 *   a checkpoint's encoded copy (values and moments)           3 x P
 *   a decoded batch and the graph's copy of it                 2 x rows x K x d
 *   per-block intermediates of forward and backward           ~12 x rows x K x max(r, b), 4 x rows x d
 *   attention (side network 2): scores, softmax and their
 *   gradients, per attention block                            4 x B x heads x T^2 per block
 *   the head's logits and their gradient, one chunk at a time 2 x rows x HEAD_CHUNK_ROWS (standard mode)
 * all float32. rows = seqLen x batchSize, K tapped layers. The model's head
 * itself is shared by every job of that model and is not counted here.
 */
export function jobMemoryBytes(config: JobConfig, model: Pick<ModelSpec, 'hiddenSize'>): number {
  const shape = jobShape(config, model.hiddenSize);
  const { d, r, b } = shape;
  const K = shape.tappedLayers.length;
  const rows = config.seqLen * config.batchSize;
  const P = parameterNames(shape).reduce((sum, n) => sum + parameterShape(shape, n).reduce((a, x) => a * x, 1), 0);
  const { attentionHeads } = attentionHeadsOf(shape);
  const scores = attentionBlocks(shape) * config.batchSize * attentionHeads * config.seqLen * config.seqLen;
  const logits = config.labelPrivate ? 0 : 2 * rows * HEAD_CHUNK_ROWS;
  return F32 * (7 * P + 2 * rows * K * d + 12 * rows * K * Math.max(r, b) + 4 * rows * d + 4 * scores + logits);
}
