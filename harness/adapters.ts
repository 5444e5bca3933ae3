import type { JobConfig } from '../common/messages';
import type { AdapterConfig, SideNetworkShape } from '../common/AdapterConfig';
import { adapterConfig } from '../server/training/sideNetworkSpec';

/** The adapter config the server would write for `shape` (its last tapped layer is the backbone's last), with a plain one-step job. */
export function testAdapterConfig(shape: SideNetworkShape, normEpsilon = 1e-5): AdapterConfig {
  const layers = shape.tappedLayers[shape.tappedLayers.length - 1]! + 1;
  const job: JobConfig = {
    tappedLayers: shape.tappedLayers, reduction: Math.max(1, Math.round(shape.d / shape.r)), bits: 8, seqLen: 128, batchSize: 4,
    totalSteps: 1, learningRate: 1e-3, warmupSteps: 1, seed: 1, checkpointEvery: 25,
  };
  return adapterConfig(shape, { layers, hiddenSize: shape.d, normEpsilon }, job);
}
