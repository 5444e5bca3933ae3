import * as assert from 'node:assert/strict';
import { MobiError } from '../../extension/core/MobiError';

/** Asserts that a promise (or a function) fails with a MobiError of this code. */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    assert.ok(MobiError.is(err), `expected a MobiError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return;
  }
  assert.fail(`expected error ${code}`);
}
