import * as assert from 'node:assert/strict';
import { readModelTensor } from '../../../extension/core/model/Backbone';
import { DeviceHead } from '../../../extension/core/model/DeviceHead';
import { SeededRandom } from '../../../common/SeededRandom';
import { decodeBatchPayload, encodeBatchPayload, encodeLayersPayload } from '../../../common/batchPayload';
import { applyLinearMap, fitLinearMap, nearestEmbeddingLookup, rowsOf, share, topIds } from '../../../harness/privacyAttacks';
import { tinyModel } from '../../helpers/models';
import { tmpDir } from '../../helpers/workspaces';

/** Positive controls: on frames whose answer is known, each attack of the privacy audit recovers it. */
describe('privacy audit attacks (positive controls)', function () {
  this.timeout(120_000);
  const d = 64;
  const model = tinyModel({ layers: 2, embd: d, heads: 4, seed: 41 });
  const rng = new SeededRandom(5);

  it('nearest embedding: the embeddings themselves, slightly perturbed, give back their ids', async () => {
    const E = (await readModelTensor(model, 'token_embd.weight')).data;
    const lookup = await nearestEmbeddingLookup(E, d, tmpDir('attacks'), 1);
    try {
      const ids = Int32Array.from({ length: 300 }, () => rng.int(lookup.vocabularySize));
      const states = rowsOf(E, d, ids).map((x) => x * 3 + rng.normal() * 1e-4); // scale does not matter, the angle does
      assert.equal(share(await topIds(lookup, states, ids.length), ids), 1);
      const noise = Float32Array.from(states, () => rng.normal());
      assert.ok(share(await topIds(lookup, noise, ids.length), ids) < 0.05, 'random states recover (almost) nothing');
    } finally {
      lookup.dispose();
    }
  });

  it('logit lens: a state along a head row (through the final norm) is guessed as that row\'s token', async () => {
    const W = (await readModelTensor(model, 'output.weight')).data;
    const norm = (await readModelTensor(model, 'output_norm.weight')).data;
    const head = await DeviceHead.open(model, 1e-5, 1);
    try {
      const ids = Int32Array.from({ length: 200 }, () => rng.int(head.vocabularySize));
      const states = rowsOf(W, d, ids).map((x, i) => x / norm[i % d]!);
      assert.ok(share(await topIds(head, states, ids.length), ids) >= 0.95);
    } finally {
      head.dispose();
    }
  });

  it('linear inverter: fitted on one set of frames that are a linear function of the input embedding, it inverts another', async () => {
    const E = (await readModelTensor(model, 'token_embd.weight')).data;
    const lookup = await nearestEmbeddingLookup(E, d, tmpDir('attacks'), 1);
    try {
      const A = Float32Array.from({ length: d * d }, () => rng.normal());
      const mix = (ids: Int32Array): Float32Array => {
        const e = rowsOf(E, d, ids);
        const out = new Float32Array(e.length);
        for (let t = 0; t < ids.length; t++) for (let i = 0; i < d; i++) {
          let s = 5; // a bias the fit must find too
          for (let j = 0; j < d; j++) s += A[i * d + j]! * e[t * d + j]!;
          out[t * d + i] = s;
        }
        return out;
      };
      const train = Int32Array.from({ length: 2000 }, () => rng.int(lookup.vocabularySize));
      const test = Int32Array.from({ length: 300 }, () => rng.int(lookup.vocabularySize));
      const inverter = fitLinearMap(mix(train), rowsOf(E, d, train), train.length, d, d, 1e-8);
      const guessed = await topIds(lookup, applyLinearMap(inverter, mix(test), test.length), test.length);
      assert.ok(share(guessed, test) >= 0.99, `recovered ${share(guessed, test)}`);
    } finally {
      lookup.dispose();
    }
  });

  it('target ids: a standard-mode frame carries every one (the server decodes them); a label-private frame carries none', () => {
    const rows = 50;
    const targets = Int32Array.from({ length: rows }, () => rng.int(300));
    const layers = [Float32Array.from({ length: rows * d }, () => rng.normal())];
    const standard = encodeBatchPayload({ rows, layers, targets, mask: new Uint8Array(rows).fill(1) }, d, 8);
    assert.equal(share(decodeBatchPayload(standard, rows, 1, d, 8, 300).targets, targets), 1);
    const labelPrivate = encodeLayersPayload(layers, rows, d, 8);
    assert.ok(labelPrivate.length < standard.length && labelPrivate.equals(standard.subarray(0, labelPrivate.length)), 'the same layers, without the labels');
  });
});
