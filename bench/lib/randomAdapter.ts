import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeAdapter } from '../../common/AdapterFile';
import { SeededRandom } from '../../common/SeededRandom';
import { modelFingerprint } from '../../extension/core/model/modelFingerprint';
import { initialParameters, parameterNames, parameterShape, sideShape } from '../../server/training/sideNetworkSpec';
import { testAdapterConfig } from '../../harness/adapters';
import { BENCH_CACHE } from './benchModels';

/** An adapter for `model` (hidden size d, all `layers` tapped) with random, non-zero weights: it costs what a trained one costs. */
export async function randomAdapterFor(model: string, d: number, layers: number, version: 1 | 2 = 1): Promise<string> {
  const file = path.join(BENCH_CACHE, `${path.basename(model)}.random${version === 1 ? '' : `-v${version}`}.adapter`);
  const shape = sideShape(d, 8, Array.from({ length: layers }, (_, i) => i), version);
  const values = initialParameters(shape, 1);
  const rng = new SeededRandom(2);
  values.set('out', Float32Array.from({ length: shape.r * d }, () => rng.normal() * 0.01));
  const tensors = parameterNames(shape).map((n) => ({ name: n, shape: parameterShape(shape, n), data: values.get(n)! }));
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  fs.writeFileSync(file, encodeAdapter(await modelFingerprint(model), testAdapterConfig(shape), { steps: 0 }, tensors));
  return file;
}
