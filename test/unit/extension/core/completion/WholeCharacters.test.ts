import * as assert from 'node:assert/strict';
import { WholeCharacters } from '../../../../../extension/core/completion/WholeCharacters';

describe('WholeCharacters', () => {
  it('shows a character split across tokens once, whole, and drops an incomplete tail', () => {
    const euro = Buffer.from('a€ü😀', 'utf8'); // 1 + 3 + 2 + 4 bytes
    const c = new WholeCharacters();
    const pieces = [...euro].map((b) => c.push(Uint8Array.of(b)));
    assert.equal(pieces.join(''), 'a€ü😀');
    assert.ok(!pieces.join('').includes('\uFFFD'));
    assert.deepEqual(pieces.filter((p) => p !== ''), ['a', '€', 'ü', '😀']);
    const tail = new WholeCharacters();
    assert.equal(tail.push(Buffer.from('x', 'utf8')) + tail.push(Buffer.from('😀', 'utf8').subarray(0, 2)), 'x');
    tail.end();
  });
});
