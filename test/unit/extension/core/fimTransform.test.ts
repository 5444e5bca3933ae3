import * as assert from 'node:assert/strict';
import { SeededRandom } from '../../../../common/SeededRandom';
import { fimTransform } from '../../../../extension/core/workspace/dataset';

describe('fill-in-the-middle training sequences', () => {
  it('keep their length, hold each marker once in order, and reorder only tokens of the sequence', () => {
    const rng = new SeededRandom(3);
    const fim = { pre: -1, suf: -2, mid: -3 };
    for (let k = 0; k < 5000; k++) {
      const n = 4 + rng.int(60);
      const seq = Int32Array.from({ length: n }, (_, i) => i);
      const out = Array.from(fimTransform(seq, fim, rng));
      assert.equal(out.length, n);
      assert.equal(out[0], fim.pre);
      const suf = out.indexOf(fim.suf);
      const mid = out.indexOf(fim.mid);
      assert.ok(suf > 0 && mid > suf, JSON.stringify(out));
      const prefix = out.slice(1, suf);
      const suffix = out.slice(suf + 1, mid);
      const middle = out.slice(mid + 1);
      assert.deepEqual([...prefix, ...middle], [...prefix, ...middle].sort((x, y) => x - y), 'prefix then middle read in order');
      assert.ok(suffix.every((t, i) => i === 0 || t === suffix[i - 1]! + 1), 'the suffix is contiguous');
      if (middle.length && suffix.length) assert.ok(middle[middle.length - 1]! < suffix[0]!, 'the middle comes before the suffix in the file');
    }
  });
});
