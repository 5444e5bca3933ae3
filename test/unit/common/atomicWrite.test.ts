import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AtomicWriteError, removeStaleTemporaries, writeFileAtomic } from '../../../common/atomicWrite';
import { spawnSync } from 'node:child_process';
import { nodeFs, withDiskBudget } from '../../helpers/diskBudget';
import { tmpDir } from '../../helpers/workspaces';

describe('atomic writes', () => {
  it('a full disk never replaces a good file with a short one, and leaves no temp file', () => {
    const dir = tmpDir('atomic');
    const file = path.join(dir, 'checkpoint.mobi');
    const good = Buffer.alloc(150_764, 7);
    writeFileAtomic(file, good);
    assert.throws(() => withDiskBudget(61_440, () => writeFileAtomic(file, Buffer.alloc(150_764, 9))), (err) => err instanceof AtomicWriteError);
    assert.deepEqual(fs.readFileSync(file), good);
    assert.deepEqual(fs.readdirSync(dir), ['checkpoint.mobi']);
  });

  it('short writes that do complete are continued to the end', () => {
    const dir = tmpDir('atomic');
    const file = path.join(dir, 'f');
    const real = nodeFs.writeSync;
    (nodeFs as { writeSync: unknown }).writeSync = (fd: number, data: Uint8Array, offset: number, length: number, position: number | null): number => real(fd, data, offset, Math.min(length, 1000), position);
    try {
      writeFileAtomic(file, Buffer.alloc(10_000, 3));
    } finally {
      (nodeFs as { writeSync: unknown }).writeSync = real;
    }
    assert.equal(fs.readFileSync(file).length, 10_000);
  });

  it('removes the temporaries a killed process left, never those of a live one', () => {
    const dir = tmpDir('stale');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    fs.mkdirSync(path.join(dir, 'jobs', 'ann', 'x'), { recursive: true });
    const stale = path.join(dir, 'jobs', 'ann', 'x', `.adapter.mobi.tmp-${dead}-1`);
    const live = path.join(dir, `.job.json.tmp-${process.pid}-2`);
    const other = path.join(dir, 'adapter.mobi.tmp-notours');
    for (const f of [stale, live, other]) fs.writeFileSync(f, 'x');
    assert.equal(removeStaleTemporaries(dir), 1);
    assert.ok(!fs.existsSync(stale) && fs.existsSync(live) && fs.existsSync(other));
  });
});
