import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parameterNames, parameterShape } from '../../../../common/AdapterConfig';
import { encodeAdapter, maxAdapterBytes, maxAdapterBytesFor } from '../../../../common/AdapterFile';
import { SeededRandom } from '../../../../common/SeededRandom';
import { Backbone } from '../../../../extension/core/model/Backbone';
import { MobiError } from '../../../../extension/core/MobiError';
import { CompletionEngine } from '../../../../extension/core/completion/CompletionEngine';
import { AdapterStore } from '../../../../extension/core/store/AdapterStore';
import { modelFingerprint } from '../../../../extension/core/model/modelFingerprint';
import { sideShape } from '../../../../server/training/sideNetworkSpec';
import { testAdapterConfig } from '../../../../harness/adapters';
import { DEVICE_CLI } from '../../../../harness/serverProcess';
import { tinyModel } from '../../../helpers/models';
import { makeWorkspace, tmpDir } from '../../../helpers/workspaces';

/** Rewrites an adapter file's header with `edit` and recomputes its checksum, as anyone can. */
function reseal(file: Buffer, edit: (header: Record<string, unknown>) => void): Buffer {
  const len = file.readUInt32LE(8);
  const header = JSON.parse(file.toString('utf8', 12, 12 + len)) as Record<string, unknown>;
  edit(header);
  const oldStart = 12 + len + ((4 - ((12 + len) % 4)) % 4);
  const json = Buffer.from(JSON.stringify(header));
  const lead = Buffer.alloc(12);
  lead.write('MOBIADPT', 0, 'latin1');
  lead.writeUInt32LE(json.length, 8);
  const body = Buffer.concat([lead, json, Buffer.alloc((4 - ((12 + json.length) % 4)) % 4), file.subarray(oldStart, file.length - 32)]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

const ODD_VALUES: unknown[] = [null, 'abc', -1, 0, 1.5, 1e9, -1e9, [], {}, [5], [0, 0], true, '', [-1], [1e12], { d: 1 }];

/** Every [path] of a JSON value, as lists of keys. */
function paths(value: unknown, at: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = at.length ? [at] : [];
  if (Array.isArray(value)) value.forEach((v, i) => out.push(...paths(v, [...at, i])));
  else if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) out.push(...paths(v, [...at, k]));
  return out;
}

function setAt(root: Record<string, unknown>, at: (string | number)[], value: unknown): void {
  let o = root as Record<string | number, unknown>;
  for (const k of at.slice(0, -1)) o = o[k] as Record<string | number, unknown>;
  o[at[at.length - 1]!] = value;
}

describe('adapter files edited by hand (fuzz, real native loader)', function () {
  this.timeout(300_000);
  let bb: Backbone;
  let file: Buffer;
  let model: string;
  const layers = 3;
  const d = 32;

  before(async () => {
    model = tinyModel({ layers, embd: d, heads: 4, kvHeads: 2, seed: 31 });
    bb = await Backbone.open(model, { contextSize: 64, maxSequences: 1, threads: 1 });
    const shape = sideShape(d, 4, [0, 1, 2]);
    const rng = new SeededRandom(4);
    const tensors = parameterNames(shape).map((name) => {
      const dims = parameterShape(shape, name);
      return { name, shape: dims, data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => rng.normal() * 0.1) };
    });
    file = encodeAdapter(await modelFingerprint(model), testAdapterConfig(shape), { steps: 1 }, tensors);
  });
  after(() => bb.dispose());

  const ALLOWED = new Set(['ADAPTER_CORRUPT', 'ADAPTER_MODEL_MISMATCH', 'ADAPTER_VERSION']);
  async function outcome(f: Buffer): Promise<string> {
    try {
      await bb.useAdapter(f);
      await bb.clearAdapter();
      return 'loaded';
    } catch (err) {
      assert.ok(err instanceof MobiError, `not a MobiError: ${String(err)}`);
      return err.code;
    }
  }

  it('the untouched file loads', async () => {
    assert.equal(await outcome(file), 'loaded');
  });

  it('every header field set to odd values: a typed adapter error or a clean load, never a crash or IO_ERROR', async () => {
    const len = file.readUInt32LE(8);
    const header = JSON.parse(file.toString('utf8', 12, 12 + len)) as Record<string, unknown>;
    const all = paths(header);
    const seen = new Map<string, number>();
    let cases = 0;
    for (const at of all) {
      for (const v of ODD_VALUES) {
        const code = await outcome(reseal(file, (h) => setAt(h, at, v)));
        assert.ok(code === 'loaded' || ALLOWED.has(code), `${at.join('.')} = ${JSON.stringify(v)} gave ${code}`);
        seen.set(code, (seen.get(code) ?? 0) + 1);
        cases++;
      }
    }
    process.stdout.write(`      ${cases} cases: ${[...seen].map(([c, n]) => `${c} ${n}`).join(', ')}\n`);
    assert.ok((seen.get('ADAPTER_CORRUPT') ?? 0) > cases / 2);
    assert.equal(await bb.sequenceLoss([Int32Array.of(1, 2, 3, 4)]).then((r) => r.tokens), 3, 'the backbone still works');
  });

  it('overlapping, duplicated, oversized or missing tensor entries are refused', async () => {
    type Entry = { name: string; shape: number[]; offset: number };
    const edits: [string, (t: Entry[]) => void][] = [
      ['overlap', (t) => (t[1]!.offset = t[0]!.offset)],
      ['300 overlapping copies', (t) => t.push(...Array.from({ length: 300 }, (_, i) => ({ ...t[0]!, name: `x${i}` })))],
      ['duplicate name', (t) => (t[1]!.name = t[0]!.name)],
      ['oversized', (t) => (t[t.length - 1]!.shape = [1_000_000, 1_000])],
      ['gap', (t) => (t[t.length - 1]!.offset += 1)],
      ['missing parameter', (t) => t.splice(2, 1)],
      ['wrong shape, same size', (t) => (t[0]!.shape = [...t[0]!.shape].reverse())],
    ];
    for (const [what, edit] of edits) {
      const code = await outcome(reseal(file, (h) => edit(h.tensors as Entry[])));
      assert.equal(code, 'ADAPTER_CORRUPT', what);
    }
  });

  it('weights that are NaN or infinite are refused', async () => {
    const bad = Buffer.from(file);
    const len = bad.readUInt32LE(8);
    const start = 12 + len + ((4 - ((12 + len) % 4)) % 4);
    bad.writeFloatLE(Number.NaN, start + 8);
    const body = bad.subarray(0, bad.length - 32);
    createHash('sha256').update(body).digest().copy(bad, bad.length - 32);
    assert.equal(await outcome(bad), 'ADAPTER_CORRUPT');
  });

  it('constants or weights that load but poison every output are refused; eval never reports a loss that is not a number', async () => {
    for (const [what, edit] of [
      ['gate temperature 1e-320', (h: Record<string, unknown>) => ((h.config as Record<string, unknown>).gateTemperature = 1e-320)],
      ['adapter norm epsilon 1e-320', (h: Record<string, unknown>) => ((h.config as Record<string, unknown>).adapterNormEpsilon = 1e-320)],
      ['norm epsilon 1e-320', (h: Record<string, unknown>) => ((h.config as Record<string, unknown>).normEpsilon = 1e-320)],
    ] as const) {
      assert.equal(await outcome(reseal(file, edit)), 'ADAPTER_CORRUPT', what);
    }
    const huge = Buffer.from(file);
    const len = huge.readUInt32LE(8);
    const start = 12 + len + ((4 - ((12 + len) % 4)) % 4);
    for (let at = start; at < huge.length - 32; at += 4) huge.writeFloatLE(3e38, at);
    createHash('sha256').update(huge.subarray(0, huge.length - 32)).digest().copy(huge, huge.length - 32);
    assert.equal(await outcome(huge), 'ADAPTER_CORRUPT', 'every weight 3e38');
    // Through the CLI: a refused adapter is a non-zero exit with a typed error, never `null` and exit 0.
    const adapter = path.join(tmpDir('poisoned'), 'a.mobi');
    fs.writeFileSync(adapter, huge);
    const r = spawnSync(process.execPath, [DEVICE_CLI, 'eval', '--workspace', makeWorkspace(3, 4, 40), '--model', bb.info.path, '--adapter', adapter, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^error\[ADAPTER_CORRUPT\]/);
    assert.ok(!/null/.test(r.stdout));
  });

  it('a tensor the side network does not have is refused, by name', async () => {
    const shape = sideShape(d, 4, [0, 1, 2]);
    const tensors = parameterNames(shape).map((name) => {
      const dims = parameterShape(shape, name);
      return { name, shape: dims, data: new Float32Array(dims.reduce((a, b) => a * b, 1)) };
    });
    const extra = encodeAdapter(await modelFingerprint(model), testAdapterConfig(shape), { steps: 1 }, [...tensors, { name: 'stowaway', shape: [4], data: new Float32Array(4) }]);
    await assert.rejects(bb.useAdapter(extra), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT') && /stowaway/.test(e.message));
  });

  it('adapter files are opened with a bound from the model: /dev/zero, a folder, a FIFO, a file larger than any adapter of the model or none at all is a typed error before it is read', async () => {
    const dir = tmpDir('adapter-files');
    const bound = maxAdapterBytesFor(bb.info);
    assert.ok(file.length <= maxAdapterBytes(sideShape(d, 4, [0, 1, 2])), 'a real adapter is within its shape\'s bound');
    assert.ok(maxAdapterBytes(sideShape(d, 4, [0, 1, 2])) <= bound, 'and within the model\'s');
    const good = path.join(dir, 'good.mobi');
    fs.writeFileSync(good, file);
    assert.equal((await bb.useAdapterFile(good)).steps, 1);
    await bb.clearAdapter();
    const large = path.join(dir, 'large.mobi');
    fs.writeFileSync(large, file);
    fs.truncateSync(large, bound + 1); // sparse: no disk taken
    const fifo = path.join(dir, 'fifo.mobi');
    const mkfifo = spawnSync('mkfifo', [fifo]);
    const cases: [string, string, RegExp][] = [
      ['/dev/zero', '/dev/zero', /not a regular file/],
      ['a folder', dir, /not a regular file/],
      ['a file past the bound', large, new RegExp(`has ${bound + 1} bytes, and an adapter for this model has at most ${bound}`)],
      ['no file', path.join(dir, 'none.mobi'), /Cannot read/],
      ...(mkfifo.status === 0 ? [['a FIFO (no writer: opening it must not wait)', fifo, /not a regular file/] as [string, string, RegExp]] : []),
    ];
    if (mkfifo.status !== 0) process.stdout.write('      (no FIFO case: mkfifo is not available here)\n');
    for (const [what, f, message] of cases) {
      await assert.rejects(bb.useAdapterFile(f), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT') && message.test(e.message), what);
    }
    // Through the CLI: a typed error and exit 1, not a process growing without end.
    const r = spawnSync(process.execPath, [DEVICE_CLI, 'eval', '--workspace', makeWorkspace(3, 4, 40), '--model', model, '--adapter', '/dev/zero', '--json'], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^error\[ADAPTER_CORRUPT\].*not a regular file/);
  });

  it('the completion engine refuses a stored adapter that is a folder or a device with a typed error, and completes without it after', async () => {
    const store = tmpDir('engine-store');
    const workspace = makeWorkspace(2, 2, 20);
    const dir = new AdapterStore(store).dir(workspace, await modelFingerprint(model));
    fs.mkdirSync(path.join(dir, 'adapter.mobi'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'adapter.json'), '{}');
    const engine = new CompletionEngine(model, store);
    try {
      await assert.rejects(engine.complete(workspace, 'function '), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'), 'a folder');
      fs.rmdirSync(path.join(dir, 'adapter.mobi'));
      fs.symlinkSync('/dev/zero', path.join(dir, 'adapter.mobi'));
      await assert.rejects(engine.complete(workspace, 'function '), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'), '/dev/zero');
      assert.equal(typeof (await engine.complete(workspace, 'function ', { fineTuned: false })), 'string');
    } finally {
      await engine.dispose();
    }
  });
});
