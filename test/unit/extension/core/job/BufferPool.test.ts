import * as assert from 'node:assert/strict';
import { BufferPool } from '../../../../../extension/core/job/BufferPool';

describe('BufferPool', () => {
  it('gives back the smallest free buffer that holds a request, as a view of the asked length', () => {
    const pool = new BufferPool();
    const big = pool.take(1000);
    const small = pool.take(100);
    assert.equal(big.length, 1000);
    pool.give(big);
    pool.give(small);
    const again = pool.take(80);
    assert.equal(again.buffer, small.buffer, 'the smallest that holds 80 bytes');
    assert.equal(again.length, 80);
    const floats = pool.takeFloats(200);
    assert.equal(floats.buffer, big.buffer, 'the 1000-byte buffer holds 200 floats');
    assert.equal(floats.length, 200);
    assert.notEqual(pool.take(2000).buffer, big.buffer, 'none free holds 2000 bytes: a new one');
  });

  it('ignores a buffer it did not give out and one given back twice, and keeps at most maxFree', () => {
    const pool = new BufferPool(2);
    pool.give(Buffer.alloc(64));
    pool.give(new Float32Array(16));
    assert.equal(pool.freeCount, 0);
    const a = pool.take(10);
    pool.give(a);
    pool.give(a);
    assert.equal(pool.freeCount, 1);
    assert.equal(pool.take(10).buffer, a.buffer);
    assert.notEqual(pool.take(10).buffer, a.buffer, 'given back twice, out once');
    const [x, y, z] = [pool.take(30), pool.take(20), pool.take(40)];
    [x, y, z].forEach((b) => pool.give(b));
    assert.equal(pool.freeCount, 2, 'the smallest went');
    assert.notEqual(pool.take(20).buffer, y.buffer);
  });
});
