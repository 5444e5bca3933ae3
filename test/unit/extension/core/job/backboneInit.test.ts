import * as assert from 'node:assert/strict';
import { backboneInitNames, parameterShape, sideShape } from '../../../../../common/AdapterConfig';
import { readModelTensor } from '../../../../../extension/core/model/Backbone';
import { backboneInit, largest } from '../../../../../extension/core/job/backboneInit';
import { tinyModel } from '../../../../helpers/models';

describe('side network starting from the backbone\'s weights', function () {
  this.timeout(60_000);

  it('picks the largest values, lowest index first on ties, in index order', () => {
    assert.deepEqual(largest(Float64Array.of(1, 5, 3, 5, 0), 3), [1, 2, 3]);
    assert.deepEqual(largest(Float64Array.of(2, 2, 2), 2), [0, 1]);
  });

  it('copies the head\'s strongest channels of each tapped layer, scaled, into every block matrix (grouped keys and values included)', async () => {
    const d = 64;
    const model = tinyModel({ layers: 3, embd: d, heads: 4, kvHeads: 2, seed: 31 });
    const shape = sideShape(d, 4, [1, 2], 2);
    const { r, b } = shape;
    const all = await backboneInit(model, 'output.weight', shape);
    const names = backboneInitNames(shape);
    const sizes = names.map((n) => parameterShape(shape, n).reduce((x, y) => x * y, 1));
    assert.equal(all.length, sizes.reduce((x, y) => x + y, 0));
    const at = (name: string): Float32Array => {
      const i = names.indexOf(name);
      const start = sizes.slice(0, i).reduce((x, y) => x + y, 0);
      return all.subarray(start, start + sizes[i]!);
    };
    const head = (await readModelTensor(model, 'output.weight')).data;
    const norms = new Float64Array(d);
    head.forEach((x, i) => (norms[i % d] += x * x));
    const channels = largest(norms, r);
    for (const k of [0, 1]) {
      const down = at(`down.${k}`);
      channels.forEach((c, j) => assert.equal(down[c * r + j], 1, `down.${k} reads channel ${c} into ${j}`));
      assert.equal(down.reduce((x, y) => x + y, 0), r, 'one channel per side unit, nothing else');
    }
    // Block 0 (backbone layer 1) attends: its Wq is the backbone's at those channels, its Wk the grouped one at channel mod 32.
    const q = (await readModelTensor(model, 'blk.1.attn_q.weight')).data;
    const kw = (await readModelTensor(model, 'blk.1.attn_k.weight')).data;
    const scale = Math.sqrt(d / r);
    for (const [i, j] of [[0, 0], [3, 7], [r - 1, 2]] as const) {
      assert.ok(Math.abs(at('wq.0')[i * r + j]! - q[channels[j]! * d + channels[i]!]! * scale) < 1e-6);
      assert.ok(Math.abs(at('wk.0')[i * r + j]! - kw[(channels[j]! % 32) * d + channels[i]!]! * scale) < 1e-6);
    }
    assert.ok(!names.includes('wq.1'), 'the last block does not attend');
    const mid = at('mid.1');
    assert.equal(mid.length, r * b);
    assert.ok(mid.some((x) => x !== 0) && at('up.1').some((x) => x !== 0), 'the MLP is copied too');
  });
});
