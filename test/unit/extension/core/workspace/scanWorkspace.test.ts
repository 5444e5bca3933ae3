import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildDataset, heldOutFiles, splitInputsTargets, trainBatchSequences } from '../../../../../extension/core/workspace/dataset';
import { scanWorkspace, scanWorkspaceAsync } from '../../../../../extension/core/workspace/scanWorkspace';
import { expectCode } from '../../../../helpers/expectCode';
import { skipBecause } from '../../../../helpers/models';
import { tmpDir } from '../../../../helpers/workspaces';

function write(root: string, rel: string, content: string | Buffer): void {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  fs.writeFileSync(path.join(root, rel), content);
}

describe('workspace scan', () => {
  it('respects .gitignore at every level, default excludes, secrets, lock files, binaries, minified and large files', () => {
    const ws = tmpDir('scan');
    write(ws, 'src/a.ts', 'export const a = 1;\n');
    write(ws, 'src/b.ts', 'export const b = 2;\n');
    write(ws, '.gitignore', 'generated/\n*.log\n');
    write(ws, 'generated/x.ts', 'ignored\n');
    write(ws, 'debug.log', 'ignored\n');
    write(ws, 'src/.gitignore', 'local.ts\n');
    write(ws, 'src/local.ts', 'ignored by the nested .gitignore\n');
    write(ws, 'node_modules/pkg/index.js', 'module.exports = 1;\n');
    write(ws, '.env', 'TOKEN=secret\n');
    write(ws, 'keys/server.pem', '-----BEGIN-----\n');
    write(ws, 'package-lock.json', '{}\n');
    write(ws, 'img.png', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0, 1, 2]));
    write(ws, 'bad-utf8.txt', Buffer.from([0xc3, 0x28, 0x41]));
    write(ws, 'app.min.js', 'var a=1;');
    write(ws, 'huge.ts', 'x'.repeat(600 * 1024));
    write(ws, 'empty.ts', '');
    fs.symlinkSync(path.join(ws, 'src/a.ts'), path.join(ws, 'link.ts'));
    const r = scanWorkspace(ws);
    assert.deepEqual(r.files.map((f) => f.path).sort(), ['.gitignore', 'src/.gitignore', 'src/a.ts', 'src/b.ts']);
    assert.equal(r.skipped.gitignore?.files, 2); // ignored folders (generated/) are not walked at all
    assert.equal(r.skipped.secret?.files, 2);
    assert.equal(r.skipped['lock-file']?.files, 1);
    assert.equal(r.skipped.binary?.files, 2);
    assert.equal(r.skipped.minified?.files, 1);
    assert.equal(r.skipped['too-large']?.files, 1);
    assert.equal(r.skipped.empty?.files, 1);
    assert.equal(r.skipped.link?.files, 1);
    const filtered = scanWorkspace(ws, { include: ['*.ts'], exclude: ['src/b.ts'] });
    assert.deepEqual(filtered.files.map((f) => f.path), ['src/a.ts']);
  });

  it('skips a file that changes while it is read, and keeps one snapshot of the others', () => {
    const ws = tmpDir('scan-change');
    write(ws, 'a.ts', 'const a = 1;\n');
    write(ws, 'b.ts', 'const b = 2;\n');
    const r = scanWorkspace(ws, {
      onFile: (rel) => {
        if (rel === 'b.ts') {
          fs.appendFileSync(path.join(ws, 'b.ts'), '// edited during the scan\n');
          fs.utimesSync(path.join(ws, 'b.ts'), new Date(), new Date(Date.now() + 5000));
        }
      },
    });
    assert.deepEqual(r.files.map((f) => f.path), ['a.ts']);
    assert.equal(r.skipped.changed?.files, 1);
  });

  it('never reads through a link swapped in during the scan, for the file or for a folder above it, even when the target looks the same', () => {
    const outside = tmpDir('scan-outside');
    write(outside, 'a.ts', 'const k = "AAAA";\n'); // the same size as the file it replaces
    fs.mkdirSync(path.join(outside, 'sub'));
    write(outside, 'sub/c.ts', 'const k = "CCCC";\n');
    const ws = tmpDir('scan-swap');
    write(ws, 'a.ts', 'const k = "aaaa";\n');
    write(ws, 'b.ts', 'const b = 2;\n');
    write(ws, 'sub/c.ts', 'const k = "cccc";\n');
    // Look-alikes: the same sizes and the same modification times.
    const when = new Date('2026-01-02T03:04:05Z');
    for (const f of [path.join(outside, 'a.ts'), path.join(outside, 'sub/c.ts'), path.join(ws, 'a.ts'), path.join(ws, 'sub/c.ts')]) fs.utimesSync(f, when, when);
    // Between the listing and the read: the file, then the folder above the other, replaced by links to them.
    const swap = (inside: string, target: string): void => {
      fs.rmSync(inside, { recursive: true });
      fs.symlinkSync(target, inside);
    };
    const r = scanWorkspace(ws, {
      onFile: (rel) => {
        if (rel === 'a.ts') swap(path.join(ws, 'a.ts'), path.join(outside, 'a.ts'));
        if (rel === 'sub/c.ts') swap(path.join(ws, 'sub'), path.join(outside, 'sub'));
      },
    });
    assert.deepEqual(r.files.map((f) => f.path), ['b.ts']);
    assert.ok(!r.files.some((f) => /AAAA|CCCC/.test(f.text)), 'nothing of the link targets was read');
    assert.equal(r.skipped.changed?.files, 2);
  });

  it('the async scan gives the same report, with the event loop free after each file it reads', async () => {
    const ws = tmpDir('scan-async');
    for (let i = 0; i < 20; i++) write(ws, `src/f${i}.ts`, `export const v${i} = ${i};\n`);
    write(ws, '.env', 'SECRET=1\n');
    // Other work queued on the event loop: it runs at each pause of the scan.
    let ticks = 0;
    let scanning = true;
    const other = (): void => {
      if (!scanning) return;
      ticks++;
      setImmediate(other);
    };
    setImmediate(other);
    const report = await scanWorkspaceAsync(ws);
    scanning = false;
    assert.deepEqual(report, scanWorkspace(ws));
    assert.ok(ticks >= 10, `other work ran ${ticks} times during the scan of 20 files`);
  });

  it('skips unreadable files', function () {
    if (process.getuid?.() === 0) skipBecause(this, 'running as root, which reads files whatever their mode');
    const ws = tmpDir('scan-perm');
    write(ws, 'a.ts', 'const a = 1;\n');
    write(ws, 'secret.ts', 'const s = 1;\n');
    fs.chmodSync(path.join(ws, 'secret.ts'), 0);
    const r = scanWorkspace(ws);
    assert.deepEqual(r.files.map((f) => f.path), ['a.ts']);
    assert.equal(r.skipped.unreadable?.files, 1);
  });

  it('refuses a missing folder with a typed error', async () => {
    await expectCode(() => scanWorkspace('/no/such/folder'), 'EMPTY_WORKSPACE');
  });
});

describe('dataset', () => {
  const files = Array.from({ length: 20 }, (_, i) => ({ path: `f${i}.ts`, bytes: 0, text: `${String.fromCharCode(65 + i)}`.repeat(30 + i) }));
  const tokenize = (t: string): Int32Array => Int32Array.from([1, ...Array.from(t, (c) => c.charCodeAt(0))]);

  it('splits held-out files deterministically and never mixes files in a sequence', () => {
    const a = buildDataset(files, tokenize, { seqLen: 16, seed: 3 });
    const b = buildDataset(files, tokenize, { seqLen: 16, seed: 3 });
    assert.deepEqual(a.heldOut, b.heldOut);
    assert.equal(a.heldOutFiles, 2);
    for (const s of [...a.train, ...a.heldOut]) {
      assert.ok(s.length <= 17);
      assert.equal(new Set(Array.from(s.subarray(1))).size, 1, 'one file per sequence');
    }
    const heldChars = new Set(a.heldOut.map((s) => s[1]));
    for (const s of a.train) assert.ok(!heldChars.has(s[1]), 'no held-out file in training');
    // heldOutFiles names exactly the files the dataset holds out (other tools, e.g. the peer benchmark, rely on it).
    const named = heldOutFiles(files, { seed: 3 }).map((f) => f.text.charCodeAt(0));
    assert.deepEqual(new Set(named), heldChars);
  });

  it('orders batches by a seeded shuffle (the same on resume) and builds next-token targets', () => {
    const d = buildDataset(files, tokenize, { seqLen: 16, seed: 3 });
    assert.deepEqual(trainBatchSequences(d, 4, 7), trainBatchSequences(d, 4, 7));
    const { inputs, targets, rows } = splitInputsTargets([Int32Array.of(1, 2, 3), Int32Array.of(4, 5)]);
    assert.deepEqual(inputs.map((x) => Array.from(x)), [[1, 2], [4]]);
    assert.deepEqual(Array.from(targets), [2, 3, 5]);
    assert.equal(rows, 3);
  });

  it('needs at least two files', async () => {
    await expectCode(() => buildDataset(files.slice(0, 1), tokenize), 'EMPTY_WORKSPACE');
  });
});
