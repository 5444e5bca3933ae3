import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ERROR_CODES, MobiError } from '../../../../extension/core/MobiError';
import { loadNativeAddon, NATIVE_ERROR_CODES, NativeError } from '../../../../extension/native/NativeAddon';
import { MAX_HEAD_RANK } from '../../../../common/AdapterConfig';
import { JOB_SETTINGS } from '../../../../common/jobSettings';
import { ROPE_BASE } from '../../../../server/training/sideNetworkSpec';
import { tinyModel } from '../../../helpers/models';

const NATIVE_DIR = path.resolve(__dirname, '..', '..', '..', '..', '..', 'extension', 'native');

/** Every upper-case string literal of the C++ sources but environment variables' names: in this addon, each is an error code handed to codedError. */
function codesInCpp(): Map<string, string> {
  const found = new Map<string, string>();
  for (const name of fs.readdirSync(NATIVE_DIR).filter((n) => /\.(cpp|hpp)$/.test(n))) {
    for (const m of fs.readFileSync(path.join(NATIVE_DIR, name), 'utf8').matchAll(/(getenv\()?"([A-Z][A-Z_]{3,})"/g)) if (!m[1]) found.set(m[2]!, name);
  }
  return found;
}

describe('native error codes', () => {
  it('every code the C++ side raises is in NATIVE_ERROR_CODES, and each of those is a device error code', () => {
    const cpp = codesInCpp();
    assert.ok(cpp.size >= 15, `read ${cpp.size} codes`);
    const unknown = [...cpp].filter(([code]) => !(NATIVE_ERROR_CODES as readonly string[]).includes(code)).map(([code, file]) => `${code} (${file})`);
    assert.deepEqual(unknown, [], 'codes the TypeScript side does not know would reach users as IO_ERROR');
    for (const code of NATIVE_ERROR_CODES) assert.ok((ERROR_CODES as readonly string[]).includes(code), code);
  });

  it('a native error keeps its code through MobiError.from (ALREADY_LOADED, NOT_GGUF), never IO_ERROR', async function () {
    this.timeout(60_000);
    assert.equal(MobiError.from(new NativeError('ALREADY_LOADED', 'x')).code, 'ALREADY_LOADED');
    const addon = await loadNativeAddon();
    const junk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mobi-native-')), 'junk.gguf');
    fs.writeFileSync(junk, Buffer.alloc(64, 7));
    assert.throws(() => addon.readTensor(junk, 'output.weight'), (err: unknown) => MobiError.from(err).code === 'NOT_GGUF');
    const model = tinyModel({ layers: 1, embd: 32, heads: 2 });
    const bb = new addon.Backbone();
    const options = { contextSize: 64, batchTokens: 64, maxSequences: 1, threads: 1, flashAttention: false };
    await bb.load(model, options);
    try {
      await assert.rejects(Promise.resolve().then(() => bb.load(model, options)), (err: unknown) => MobiError.from(err).code === 'ALREADY_LOADED');
    } finally {
      bb.dispose();
    }
  });

  it('HeadLoss: dispose() during a run waits for it, then frees the head (later calls are DISPOSED)', async function () {
    this.timeout(60_000);
    const addon = await loadNativeAddon();
    const model = tinyModel({ layers: 1, embd: 32, heads: 2, type: 'q8_0' });
    const head = new addon.HeadLoss(model, 1e-5, 1);
    const { hiddenSize } = await head.load();
    const n = 4;
    const running = head.run(new Float32Array(n * hiddenSize).fill(0.5), new Int32Array(n).fill(3), new Float32Array(n).fill(1), true);
    head.dispose();
    const r = await running;
    assert.equal(r.losses.length, n, 'the run in flight completes');
    assert.ok(r.losses.every(Number.isFinite));
    assert.throws(() => head.run(new Float32Array(hiddenSize), new Int32Array(1), new Float32Array(1), false), (err: unknown) => MobiError.from(err).code === 'DISPOSED');
  });
});

describe('constants written in two languages', () => {
  it('the C++ side network\'s RoPE base and largest head-update rank equal TypeScript\'s (sideNetworkSpec.ts, the headRank setting)', async function () {
    this.timeout(60_000);
    const { constants } = await loadNativeAddon();
    assert.equal(constants.ropeBase, ROPE_BASE);
    assert.equal(constants.maxHeadRank, MAX_HEAD_RANK);
    assert.equal(MAX_HEAD_RANK, JOB_SETTINGS.headRank.max);
  });
});
