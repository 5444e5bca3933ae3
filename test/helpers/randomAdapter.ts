import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeAdapter } from '../../common/AdapterFile';
import { SeededRandom } from '../../common/SeededRandom';
import { testAdapterConfig } from '../../harness/adapters';
import { Backbone } from '../../extension/core/model/Backbone';
import { modelFingerprint } from '../../extension/core/model/modelFingerprint';
import { initialParameters, parameterNames, parameterShape, sideShape } from '../../server/training/sideNetworkSpec';
import { tmpDir } from './workspaces';

/** Side network 2 with a head update, random non-zero weights, for `model`. */
export async function randomHeadAdapter(model: string): Promise<string> {
  const bb = await Backbone.open(model, { contextSize: 64, maxSequences: 1, threads: 1 });
  const { hiddenSize: d, layers, vocabularySize: vocab } = bb.info;
  bb.dispose();
  const shape = { ...sideShape(d, 4, [...Array(layers).keys()], 2, false, { rank: 4, vocab }), attentionHeads: 2 };
  const values = initialParameters(shape, 3);
  const rng = new SeededRandom(4);
  values.set('out', Float32Array.from({ length: shape.r * d }, () => rng.normal() * 0.2));
  values.set('head_b', Float32Array.from({ length: vocab * 4 }, () => rng.normal() * 0.3));
  const tensors = parameterNames(shape).map((n) => ({ name: n, shape: parameterShape(shape, n), data: values.get(n)! }));
  const file = path.join(tmpDir('platform-adapter'), 'adapter.mobi');
  fs.writeFileSync(file, encodeAdapter(await modelFingerprint(model), testAdapterConfig(shape), { steps: 0 }, tensors));
  return file;
}

