import * as assert from 'node:assert/strict';
import { WIRE_ERROR_CODES, WireError } from '../../../common/WireError';
import { STORAGE_ERROR_CODES, StorageError } from '../../../server/storage/StorageError';
import { wireErrorOf } from '../../../server/wireErrorOf';

describe('store failures as devices hear them (server/wireErrorOf.ts)', () => {
  it('turns every storage code into a wire code, keeping the message and the owner\'s address', () => {
    for (const code of STORAGE_ERROR_CODES) {
      const wire = wireErrorOf(new StorageError(code, `m ${code}`, 'ws://b.example:1'));
      assert.ok(wire instanceof WireError && WIRE_ERROR_CODES.includes(wire.code), code);
      assert.equal(wire.message, `m ${code}`);
      assert.equal(wire.location, 'ws://b.example:1');
      assert.equal(wire.fatal, false);
    }
    assert.equal(wireErrorOf(new StorageError('LEASE_LOST', 'x'))!.code, 'JOB_ELSEWHERE');
    assert.equal(wireErrorOf(new StorageError('UNAVAILABLE', 'x'))!.code, 'STORE_UNAVAILABLE');
    assert.equal(wireErrorOf(new StorageError('WRITE_FAILED', 'x'))!.code, 'STORAGE');
    assert.equal(wireErrorOf(new StorageError('BAD_KEY', 'x'))!.code, 'BAD_FRAME');
  });

  it('passes a wire error as it is and leaves anything else to the session (INTERNAL, logged)', () => {
    const w = new WireError('LIMIT', 'x');
    assert.equal(wireErrorOf(w), w);
    assert.equal(wireErrorOf(new Error('disk on fire')), undefined);
    assert.equal(wireErrorOf('string'), undefined);
  });
});
