import * as assert from 'node:assert/strict';
import { SeededRandom } from '../../../common/SeededRandom';
import { Bits, bytesPerRow, dequantizeRows, quantizeRows } from '../../../common/ActivationQuantizer';
import { ADAPTER_FORMAT_VERSION, AdapterFormatError, decodeAdapter, encodeAdapter } from '../../../common/AdapterFile';
import { decodeBatchPayload, encodeBatchPayload, encodeLayersPayload, encodePayloadSliced } from '../../../common/batchPayload';
import { decodeDeviceFrame, decodeServerFrame, encodeFrame, encodeFrameParts } from '../../../common/codec';
import { fromHalf, toHalf } from '../../../common/float16';
import { MAX_FRAME_BYTES, PROTOCOL_VERSION } from '../../../common/limits';
import { Answer, DeviceMessage, DeviceMessages, JobConfig, Replies, ReplyOf, ServerMessage, ServerMessages } from '../../../common/messages';
import { WireError } from '../../../common/WireError';
import { testAdapterConfig } from '../../../harness/adapters';

const model = { fingerprint: 'ab'.repeat(32), architecture: 'llama', layers: 4, hiddenSize: 64, vocabularySize: 700, normEpsilon: 1e-5, headDigest: 'cd'.repeat(32) };
const J1 = '0b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d';
const config: JobConfig = { tappedLayers: [0, 1, 2, 3], reduction: 8, bits: 8, seqLen: 128, batchSize: 4, totalSteps: 10, learningRate: 1e-3, warmupSteps: 2, seed: 1, checkpointEvery: 5 };

/** One example of every message, each direction (a missing type fails to compile). */
const deviceExamples: { [T in DeviceMessage['type']]: DeviceMessage<T> } = {
  'session/hello': { type: 'session/hello', protocol: 1, client: 'mobillm-test', model },
  'head/begin': { type: 'head/begin', rows: 700, cols: 64 },
  'head/chunk': { type: 'head/chunk', rowStart: 0, rowCount: 700 },
  'head/end': { type: 'head/end' },
  'job/create': { type: 'job/create', name: 'ws', config },
  'job/resume': { type: 'job/resume', jobId: J1, requestId: 4 },
  'job/list': { type: 'job/list' },
  'batch/train': { type: 'batch/train', jobId: J1, index: 3, rows: 512 },
  'batch/eval': { type: 'batch/eval', jobId: J1, evalId: 'before', index: 0, rows: 512 },
  'batch/grad': { type: 'batch/grad', jobId: J1, index: 3, rows: 512, lossSum: 2800.25, tokens: 500 },
  'job/finish': { type: 'job/finish', jobId: J1 },
  'job/cancel': { type: 'job/cancel', jobId: J1 },
  'adapter/get': { type: 'adapter/get', jobId: J1 },
};
const serverExamples: { [T in ServerMessage['type']]: ServerMessage<T> } = {
  'session/welcome': { type: 'session/welcome', protocol: 1, server: 'x', backend: 'wasm', headCached: false, credits: 2 },
  'head/stored': { type: 'head/stored', fingerprint: 'ab' },
  'job/ready': { type: 'job/ready', jobId: J1, nextIndex: 0, step: 0, state: 'training', requestId: 4 },
  'batch/ack': { type: 'batch/ack', jobId: J1, index: 0, step: 1, loss: 6.5, learningRate: 1e-4, tokens: 500, seconds: 0.25 },
  'eval/result': { type: 'eval/result', jobId: J1, evalId: 'before', index: 0, lossSum: 3000.5, tokens: 500 },
  'batch/side': { type: 'batch/side', jobId: J1, index: 3, rows: 512 },
  'eval/side': { type: 'eval/side', jobId: J1, evalId: 'before', index: 0, rows: 512 },
  'job/waiting': { type: 'job/waiting', jobId: J1, ahead: 3 },
  'job/checkpoint': { type: 'job/checkpoint', jobId: J1, step: 5, nextIndex: 5 },
  'job/done': { type: 'job/done', jobId: J1, step: 10, state: 'finished' },
  'job/list/result': { type: 'job/list/result', jobs: [{ id: J1 }] },
  'adapter/data': { type: 'adapter/data', jobId: J1, bytes: 10, sha256: 'cd', offset: 0 },
  'error': { type: 'error', code: 'BAD_FRAME', message: 'x', fatal: false },
};

function wireCode(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof WireError, String(err));
    return err.code;
  }
  assert.fail('expected a WireError');
}

describe('wire protocol', () => {
  it('each request names its reply: a device message and a server message; awaiting another does not compile', () => {
    for (const [request, reply] of Object.entries(Replies)) {
      assert.ok(request in DeviceMessages, request);
      assert.ok(reply in ServerMessages, reply);
    }
    const ready: ReplyOf<'job/create'> = 'job/ready';
    // @ts-expect-error job/create is answered by job/ready, never by job/done
    const done: ReplyOf<'job/create'> = 'job/done';
    assert.notEqual(ready, done);
  });

  it('a server handler returns its request\'s reply: any other does not compile', () => {
    const create: () => Answer<'job/create'> = () => ({ message: serverExamples['job/ready'] });
    // @ts-expect-error job/create's handler returns job/ready, never job/done
    const wrong: () => Answer<'job/create'> = () => ({ message: serverExamples['job/done'] });
    const adapter: () => Answer<'adapter/get'> = () => ({ message: serverExamples['adapter/data'], payload: Buffer.alloc(1) });
    assert.equal(create().message.type, 'job/ready');
    assert.equal(adapter().message.type, 'adapter/data');
    assert.equal(wrong().message.type, 'job/done', 'compiled anyway, it would send the wrong reply');
  });

  it('round-trips every message in both directions, with payloads', () => {
    const payload = Buffer.from([1, 2, 3, 250]);
    for (const msg of Object.values(deviceExamples)) {
      const back = decodeDeviceFrame(encodeFrame(msg, payload));
      assert.deepEqual(back.message, msg);
      assert.deepEqual(back.payload, payload);
    }
    for (const msg of Object.values(serverExamples)) {
      assert.deepEqual(decodeServerFrame(encodeFrame(msg)).message, msg);
    }
  });

  it('rejects bad frames with typed codes', () => {
    const good = encodeFrame(deviceExamples['batch/train']);
    assert.equal(wireCode(() => decodeDeviceFrame(good.subarray(0, 3))), 'BAD_FRAME');
    assert.equal(wireCode(() => decodeDeviceFrame(good.subarray(0, 10))), 'BAD_FRAME');
    const wrongVersion = Buffer.from(good);
    // An older protocol's header, one digit like this one's.
    wrongVersion.write(`{"v":${PROTOCOL_VERSION - 1}`, 4, 'utf8');
    assert.equal(wireCode(() => decodeDeviceFrame(wrongVersion)), 'VERSION_MISMATCH');
    assert.equal(wireCode(() => decodeDeviceFrame(encodeFrame({ type: 'nope' }))), 'UNKNOWN_TYPE');
    assert.equal(wireCode(() => decodeDeviceFrame(encodeFrame({ type: 'batch/train', jobId: 'j', index: -1, rows: 2 } as never))), 'BAD_FRAME');
    assert.equal(wireCode(() => decodeDeviceFrame(encodeFrame({ type: 'job/resume', jobId: 5 } as never))), 'BAD_FRAME');
    assert.equal(wireCode(() => decodeDeviceFrame(encodeFrame(serverExamples['batch/ack']))), 'UNKNOWN_TYPE', 'a server message sent by a device');
  });

  it('a frame in parts: the same bytes as one frame, the payload a view of the caller\'s buffer, and the size limit', () => {
    const payload = Buffer.from(Array.from({ length: 300 }, (_, i) => i % 251));
    const message = { type: 'batch/train', jobId: 'j', index: 3, rows: 2 } as const;
    const parts = encodeFrameParts(message, payload);
    assert.equal(parts.length, 2);
    assert.deepEqual(Buffer.concat(parts), encodeFrame(message, payload));
    assert.equal(parts[1]!.buffer, payload.buffer, 'not copied');
    assert.equal(encodeFrameParts(message).length, 1, 'no payload: one part');
    assert.throws(() => encodeFrameParts(message, new Uint8Array(MAX_FRAME_BYTES)), (e: unknown) => e instanceof WireError && e.code === 'TOO_BIG');
  });

  it('converts halves exactly at representable values and rounds to nearest', () => {
    for (const v of [0, 1, -2, 0.5, 65504, 6.103515625e-5, 5.960464477539063e-8]) assert.equal(fromHalf(toHalf(v)), v);
    assert.equal(fromHalf(toHalf(1 + 2 ** -11)), 1); // tie -> even
    assert.equal(toHalf(1e6), 0x7c00);
  });
});

describe('activation quantization', () => {
  const d = 896;
  const rows = 64;
  const rng = new SeededRandom(4);
  const src = Float32Array.from({ length: rows * d }, () => rng.normal() * (1 + rng.next() * 3));
  const relRms = (a: Float32Array, b: Float32Array): number => {
    let num = 0;
    let den = 0;
    for (let i = 0; i < a.length; i++) {
      num += (a[i]! - b[i]!) ** 2;
      den += a[i]! ** 2;
    }
    return Math.sqrt(num / den);
  };
  const bounds: Record<Bits, number> = { 16: 1e-3, 8: 0.01, 4: 0.15 };

  for (const bits of [16, 8, 4] as Bits[]) {
    it(`${bits}-bit: exact size and bounded reconstruction error`, () => {
      const out = Buffer.alloc(rows * bytesPerRow(d, bits));
      assert.equal(quantizeRows(src, rows, d, bits, out), out.length);
      const back = dequantizeRows(out, rows, d, bits);
      const err = relRms(src, back);
      process.stdout.write(`      ${bits}-bit: ${bytesPerRow(d, bits)} bytes per token per layer at d=${d} (f32: ${4 * d}), relative RMS error ${err.toExponential(2)}\n`);
      assert.ok(err < bounds[bits], `${err}`);
      assert.ok(err > 0);
    });
  }

  it('int4 handles a hidden size that is not a multiple of the group', () => {
    const dd = 40;
    const x = src.subarray(0, 3 * dd);
    const out = Buffer.alloc(3 * bytesPerRow(dd, 4));
    quantizeRows(x, 3, dd, 4, out);
    assert.ok(relRms(x, dequantizeRows(out, 3, dd, 4)) < 0.15);
  });

  it('batch payload round trip checks sizes and targets', () => {
    const batch = { rows: 8, layers: [src.slice(0, 8 * d), src.slice(8 * d, 16 * d)], targets: Int32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), mask: Uint8Array.from([1, 1, 1, 0, 1, 1, 1, 1]) };
    const p = encodeBatchPayload(batch, d, 8);
    const back = decodeBatchPayload(p, 8, 2, d, 8, 100);
    assert.deepEqual(back.targets, batch.targets);
    assert.deepEqual(back.mask, batch.mask);
    assert.ok(relRms(batch.layers[1]!, back.layers[1]!) < 0.01);
    assert.equal(wireCode(() => decodeBatchPayload(p.subarray(1), 8, 2, d, 8, 100)), 'BAD_FRAME');
    assert.equal(wireCode(() => decodeBatchPayload(p, 8, 2, d, 8, 5)), 'BAD_FRAME');
  });

  it('the sliced encoder (the device\'s, the event loop free between layers) writes the same bytes as the one-go encoders', async () => {
    const batch = { rows: 8, layers: [src.slice(0, 8 * d), src.slice(8 * d, 16 * d)], targets: Int32Array.from([1, 2, 3, 4, 5, 6, 7, 8]), mask: Uint8Array.from([1, 1, 1, 0, 1, 1, 1, 1]) };
    for (const bits of [4, 8, 16] as Bits[]) {
      assert.deepEqual(await encodePayloadSliced(batch.layers, 8, d, bits, batch), encodeBatchPayload(batch, d, bits), `${bits} bits, with labels`);
      assert.deepEqual(await encodePayloadSliced(batch.layers, 8, d, bits), encodeLayersPayload(batch.layers, 8, d, bits), `${bits} bits, layers only`);
    }
  });
});

describe('adapter file', () => {
  const tensors = [
    { name: 'down.0', shape: [4, 2], data: Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]) },
    { name: 'alpha.0', shape: [1], data: Float32Array.of(0.25) },
  ];
  const fp = 'f'.repeat(64);
  const config4x2 = testAdapterConfig({ d: 4, r: 2, b: 2, tappedLayers: [0] });

  it('round-trips and verifies its checksum and model', () => {
    const file = encodeAdapter(fp, config4x2, { steps: 3 }, tensors);
    const back = decodeAdapter(file, fp);
    assert.equal(back.header.version, ADAPTER_FORMAT_VERSION);
    assert.deepEqual(back.tensors.get('down.0')!.data, tensors[0]!.data);
    assert.deepEqual(back.header.meta, { steps: 3 });
  });

  it('detects corruption, a newer format and another model', () => {
    const file = encodeAdapter(fp, config4x2, {}, tensors);
    const code = (f: () => unknown): string => {
      try {
        f();
      } catch (err) {
        assert.ok(err instanceof AdapterFormatError);
        return err.code;
      }
      return 'none';
    };
    for (const at of [0, 20, file.length - 40, file.length - 1]) {
      const bad = Buffer.from(file);
      bad[at] = bad[at]! ^ 0x40;
      assert.equal(code(() => decodeAdapter(bad)), 'ADAPTER_CORRUPT', `flipped byte ${at}`);
    }
    assert.equal(code(() => decodeAdapter(file.subarray(0, 100))), 'ADAPTER_CORRUPT');
    assert.equal(code(() => decodeAdapter(file, 'e'.repeat(64))), 'ADAPTER_MODEL_MISMATCH');
    const newer = JSON.parse(JSON.stringify(decodeAdapter(file).header));
    const future = encodeAdapter(fp, config4x2, {}, tensors);
    const text = future.toString('latin1').replace(`"version":${ADAPTER_FORMAT_VERSION}`, `"version":${ADAPTER_FORMAT_VERSION + 1}`);
    const body = Buffer.from(text, 'latin1').subarray(0, future.length - 32);
    const resealed = Buffer.concat([body, require('node:crypto').createHash('sha256').update(body).digest()]);
    assert.equal(newer.version, ADAPTER_FORMAT_VERSION);
    assert.equal(code(() => decodeAdapter(resealed)), 'ADAPTER_VERSION');
  });
});
