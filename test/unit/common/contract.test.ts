import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { attentionBlocks, parseAdapterConfig } from '../../../common/AdapterConfig';
import { ADAPTER_FORMAT_VERSION, AdapterFormatError, decodeAdapter, encodeAdapter } from '../../../common/AdapterFile';
import { decodeServerFrame, encodeFrame } from '../../../common/codec';
import { WireError } from '../../../common/WireError';
import { testAdapterConfig } from '../../../harness/adapters';

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const fp = 'f'.repeat(64);
const shape = { d: 8, r: 2, b: 2, tappedLayers: [1, 2] };
const tensors = [{ name: 'out', shape: [2, 8], data: new Float32Array(16) }];

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    if (err instanceof AdapterFormatError || err instanceof WireError) return err.code;
    return `not typed: ${String(err)}`;
  }
  return 'none';
}

/** The adapter file with its header edited and its checksum recomputed (as anyone can). */
function withHeader(edit: (header: Record<string, unknown>) => void): Buffer {
  const file = encodeAdapter(fp, testAdapterConfig(shape), {}, tensors);
  const len = file.readUInt32LE(8);
  const header = JSON.parse(file.toString('utf8', 12, 12 + len)) as Record<string, unknown>;
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const pad = (4 - ((12 + json.length) % 4)) % 4;
  const oldStart = 12 + len + ((4 - ((12 + len) % 4)) % 4);
  const start = Buffer.alloc(12);
  start.write('MOBIADPT', 0, 'latin1');
  start.writeUInt32LE(json.length, 8);
  const body = Buffer.concat([start, json, Buffer.alloc(pad), file.subarray(oldStart, file.length - 32)]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

function sourceFiles(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(rel, exts));
    else if (exts.some((x) => e.name.endsWith(x))) out.push(rel);
  }
  return out;
}

/** Repository-relative paths a TypeScript file imports (relative specifiers only). */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\()\s*'(\.[^']+)'/g)].map((m) => m[1]!);
  return specs.map((s) => path.normalize(path.join(path.dirname(file), s)));
}

describe('the contract', () => {
  it('the adapter config is one typed definition: a valid one round-trips, a damaged one is ADAPTER_CORRUPT', () => {
    const config = testAdapterConfig(shape);
    assert.deepEqual(decodeAdapter(encodeAdapter(fp, config, {}, tensors)).header.config, config);
    const edits: [string, (c: Record<string, unknown> & { shape: Record<string, unknown> }) => void][] = [
      ['no shape', (c) => delete (c as { shape?: unknown }).shape],
      ['gate temperature null', (c) => (c.gateTemperature = null)],
      ['tapped layers not a list', (c) => (c.shape.tappedLayers = 5)],
      ['d not a number', (c) => (c.shape.d = 'abc')],
      ['zero width', (c) => (c.shape.r = 0)],
      ['layers not ascending', (c) => (c.shape.tappedLayers = [2, 1])],
      ['last layer not tapped', (c) => (c.shape.tappedLayers = [0, 1])],
      ['d differs from hidden size', (c) => (c.hiddenSize = 9)],
      ['negative epsilon', (c) => (c.adapterNormEpsilon = -1)],
      ['unknown gelu', (c) => (c.gelu = 'erf')],
    ];
    for (const [what, edit] of edits) {
      const file = withHeader((h) => edit(h.config as never));
      assert.equal(codeOf(() => decodeAdapter(file)), 'ADAPTER_CORRUPT', what);
      assert.equal(codeOf(() => parseAdapterConfig((JSON.parse(JSON.stringify(decodeAdapterHeaderOnly(file)))))), 'ADAPTER_CORRUPT', what);
    }
  });

  it('an adapter format version this code does not read is ADAPTER_VERSION, older or newer', () => {
    assert.equal(codeOf(() => decodeAdapter(withHeader((h) => (h.version = ADAPTER_FORMAT_VERSION)))), 'none');
    for (const v of [0, ADAPTER_FORMAT_VERSION + 1, '1', null]) {
      assert.equal(codeOf(() => decodeAdapter(withHeader((h) => (h.version = v)))), 'ADAPTER_VERSION', `version ${String(v)}`);
    }
  });

  it('an adapter of format 3 (the design called `version`, attention heads `heads`) reads in today\'s names', () => {
    const v2 = { d: 8, r: 4, b: 4, tappedLayers: [1, 2], sideNetwork: 2 as const, attentionHeads: 1 };
    const old = withHeader((h) => {
      h.version = 3;
      const s = (h.config as { shape: Record<string, unknown> }).shape;
      Object.assign(s, { version: 2, heads: 1 });
      delete s.sideNetwork;
      delete s.attentionHeads;
    });
    const shapeRead = decodeAdapter(old).header.config.shape;
    assert.equal(shapeRead.sideNetwork, 2);
    assert.equal(shapeRead.attentionHeads, 1);
    assert.ok(!('version' in shapeRead) && !('heads' in shapeRead));
    assert.equal(attentionBlocks(v2), 1, 'every block but the last attends');
    assert.equal(attentionBlocks({ ...v2, sideNetwork: 1 }), 0);
    // Format 4 does not know the old names: a format-4 header with `version` alone is side network 1, and one with a bad design is damaged.
    assert.equal(codeOf(() => decodeAdapter(withHeader((h) => ((h.config as { shape: Record<string, unknown> }).shape.sideNetwork = 3)))), 'ADAPTER_CORRUPT');
  });

  it('wire error codes and job states are closed sets on the wire', () => {
    const ok = encodeFrame({ type: 'error', code: 'LIMIT', message: 'm', fatal: false });
    assert.equal(decodeServerFrame(ok).message.type, 'error');
    assert.equal(codeOf(() => decodeServerFrame(encodeFrame({ type: 'error', code: 'SOMETHING_ELSE', message: 'm', fatal: false }))), 'BAD_FRAME');
    assert.equal(codeOf(() => decodeServerFrame(encodeFrame({ type: 'job/done', jobId: '0b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d', step: 1, state: 'failed' }))), 'BAD_FRAME');
    assert.equal(decodeServerFrame(encodeFrame({ type: 'job/done', jobId: '0b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d', step: 1, state: 'cancelled' })).message.type, 'job/done');
  });
});

/** The header's config, parsed without validation (to feed parseAdapterConfig directly). */
function decodeAdapterHeaderOnly(file: Buffer): unknown {
  const len = file.readUInt32LE(8);
  return (JSON.parse(file.toString('utf8', 12, 12 + len)) as { config: unknown }).config;
}

describe('the layout', () => {
  const ts = [...sourceFiles('common', ['.ts']), ...sourceFiles('extension', ['.ts']), ...sourceFiles('server', ['.ts']), ...sourceFiles('webview', ['.ts'])];

  it('common/ imports neither side; server/ never imports extension/; extension/ never imports server/ (the embedded server is a child process)', () => {
    const bad: string[] = [];
    for (const file of ts) {
      for (const target of importsOf(file)) {
        const side = (p: string): string => p.split(path.sep)[0]!;
        if (side(file) === 'common' && side(target) !== 'common') bad.push(`${file} -> ${target}`);
        if (side(file) === 'server' && side(target) === 'extension') bad.push(`${file} -> ${target}`);
        if (side(file) === 'extension' && side(target) === 'server') bad.push(`${file} -> ${target}`);
      }
    }
    assert.deepEqual(bad, []);
    assert.ok(ts.length > 50, `read ${ts.length} files`);
    assert.ok(importsOf(path.join('server', 'cli', 'embedded.ts')).some((t) => t.startsWith(`server${path.sep}`)), 'the reader sees the embedded server\'s own imports');
  });

  it('extension/native/ never imports extension/core/ (core wraps the addon\'s errors); extension/core/ has at most 8 entries at its top level', () => {
    const native = ts.filter((f) => f.startsWith(path.join('extension', 'native') + path.sep));
    assert.ok(native.length > 0, 'the reader sees the native folder');
    const bad = native.flatMap((f) => importsOf(f).filter((t) => t.startsWith(path.join('extension', 'core') + path.sep)).map((t) => `${f} -> ${t}`));
    assert.deepEqual(bad, []);
    const top = fs.readdirSync(path.join(ROOT, 'extension', 'core'));
    assert.ok(top.length <= 8, `extension/core/ holds ${top.length} entries: ${top.join(', ')}`);
  });

  it('benchmarks import nothing from test/ (what both use lives in harness/)', () => {
    const bench = sourceFiles('bench', ['.ts']);
    assert.ok(bench.length > 5, `read ${bench.length} files`);
    const bad = bench.flatMap((f) => importsOf(f).filter((t) => t.startsWith(`test${path.sep}`)).map((t) => `${f} -> ${t}`));
    assert.deepEqual(bad, []);
  });

  it('no product source file is over 400 lines', () => {
    const files = [...ts, ...sourceFiles(path.join('extension', 'native'), ['.cpp', '.hpp'])];
    const long = files.map((f) => [f, fs.readFileSync(path.join(ROOT, f), 'utf8').split('\n').length] as const).filter(([, n]) => n > 400);
    assert.deepEqual(long, []);
  });
});
