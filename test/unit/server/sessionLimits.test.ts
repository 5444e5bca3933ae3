import * as assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { CloseCode, MAX_EVAL_ID_CHARS, MAX_EVALS_PER_JOB, PROTOCOL_VERSION } from '../../../common/limits';
import { DeviceSession } from '../../../server/DeviceSession';
import { JobRegistry } from '../../../server/JobRegistry';
import { MAX_SKIPPED_STEPS_IN_A_ROW } from '../../../server/TrainingJob';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { DEFAULT_SESSION_LIMITS, SessionLimits } from '../../../server/SessionLimits';
import { OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { batchPayload, config, D, model, SocketEnd, storesWithHead } from '../../helpers/sessionHarness';
import { bytesPerRow } from '../../../common/ActivationQuantizer';
import { backboneInitNames, jobShape, parameterShape } from '../../../common/AdapterConfig';
import { decodeAdapter } from '../../../common/AdapterFile';
import { encodeLayersPayload } from '../../../common/batchPayload';
import { SeededRandom } from '../../../common/SeededRandom';
import { HeadStore } from '../../../server/storage/file/HeadStore';
import { JobStore } from '../../../server/storage/file/JobStore';
import { tmpDir } from '../../helpers/workspaces';
import { LocalTrainers } from '../../../server/training/LocalTrainers';

describe('server: what one session may do', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  async function session(limits: Partial<SessionLimits> = {}, withHead = true) {
    const dir = tmpDir('server-unit');
    const { heads, jobs } = withHead ? await storesWithHead() : { heads: new HeadStore(dir), jobs: new JobStore(dir) };
    const registry = new JobRegistry(new LocalTrainers(engine), jobs, heads);
    const ctx = { heads, jobs, registry, metrics: new ServerMetrics(), limits: { ...DEFAULT_SESSION_LIMITS, ...limits }, backend: 'test', log: () => undefined };
    const ws = new SocketEnd();
    new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
    ws.deliver({ type: 'session/hello', protocol: PROTOCOL_VERSION, client: 'test', model });
    await ws.next('session/welcome');
    return { ws, jobs, registry };
  }

  it('a label-private job needs no head; only a gradient for a side output it was sent returns a credit', async () => {
    const { ws } = await session({}, false);
    ws.deliver({ type: 'job/create', name: 'std', config });
    assert.equal((await ws.next('error')).code, 'HEAD_MISSING', 'a standard job still needs the head');
    ws.deliver({ type: 'job/create', name: 'lp', config: { ...config, labelPrivate: true } });
    const { jobId } = await ws.next('job/ready');
    const rows = config.seqLen;
    const rng = new SeededRandom(5);
    const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * D }, () => rng.normal()));
    const grad = Buffer.alloc(rows * bytesPerRow(D, 8));
    ws.deliver({ type: 'batch/grad', jobId, index: 0, rows, lossSum: 1, tokens: rows }, grad);
    assert.equal((await ws.next('error')).code, 'OUT_OF_ORDER', 'a gradient before its batch');
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows }, batchPayload(1).payload);
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'a payload with targets is refused in a label-private job');
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows }, encodeLayersPayload(layers, rows, D, 8));
    const side = await ws.next('batch/side');
    assert.equal(side.index, 0);
    ws.deliver({ type: 'batch/grad', jobId, index: 0, rows, lossSum: 1, tokens: rows }, grad.subarray(1));
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'a gradient of the wrong size');
    ws.deliver({ type: 'batch/grad', jobId, index: 0, rows, lossSum: 30, tokens: rows }, grad);
    const ack = await ws.next('batch/ack');
    assert.deepEqual([ack.index, ack.step, ack.loss], [0, 1, 30 / rows]);
    ws.deliver({ type: 'batch/grad', jobId, index: 0, rows, lossSum: 1, tokens: rows }, grad);
    assert.equal((await ws.next('error')).code, 'OUT_OF_ORDER', 'the same gradient twice returns no second credit');
  });

  it('resuming a job counts toward the per-user job limit', async () => {
    const { ws } = await session({ maxJobsPerUser: 1 });
    ws.deliver({ type: 'job/create', name: 'a', config });
    const a = await ws.next('job/ready');
    ws.deliver({ type: 'job/cancel', jobId: a.jobId });
    await ws.next('job/done');
    ws.deliver({ type: 'job/create', name: 'b', config });
    await ws.next('job/ready');
    ws.deliver({ type: 'job/resume', jobId: a.jobId });
    assert.equal((await ws.next('error')).code, 'LIMIT');
  });

  it('refuses settings out of range: huge steps or seed, warm-up past the end, no checkpoints, a reduction that does not divide d', async () => {
    const { ws } = await session();
    for (const bad of [{ totalSteps: 2 ** 40 }, { seed: 2 ** 40 }, { warmupSteps: config.totalSteps + 1 }, { checkpointEvery: 0 }, { reduction: 3 }]) {
      ws.deliver({ type: 'job/create', name: 'x', config: { ...config, ...bad } });
      assert.equal((await ws.next('error')).code, 'BAD_FRAME', JSON.stringify(bad));
    }
  });

  it('a side-network-2 job needs each batch\'s sequence lengths, summing to its rows; other versions are refused', async () => {
    const { ws } = await session();
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, sideNetwork: 3 as 2 } }); // a value the type refuses, as a hostile device may send it
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'side network 3');
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, sideNetwork: 2, seqLen: 4096, batchSize: 16 } });
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'attention scores past the limit');
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, labelPrivate: true, joinAfterNorm: true } });
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'a label-private job joining after the norm');
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, headRank: 17 } });
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'a head update past rank 16');
    ws.deliver({ type: 'job/create', name: 'v2', config: { ...config, sideNetwork: 2, batchSize: 2 } });
    const { jobId } = await ws.next('job/ready');
    const b = batchPayload(1);
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows }, b.payload);
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'no lengths');
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows, lengths: [b.rows - 1] }, b.payload);
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'lengths that do not sum to rows');
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows, lengths: [b.rows - 3, 3] }, b.payload);
    const ack = await ws.next('batch/ack');
    assert.deepEqual([ack.index, ack.step], [0, 1]);
  });

  it('takes a new job\'s starting values from its backbone with job/create, checks them, and keeps them as its step-0 checkpoint', async () => {
    const { ws, jobs } = await session();
    const shape = jobShape({ ...config, initFromBackbone: true }, { hiddenSize: D, vocabularySize: 0 });
    const sizes = backboneInitNames(shape).map((n) => parameterShape(shape, n).reduce((a, b) => a * b, 1));
    const start = Float32Array.from({ length: sizes.reduce((a, b) => a + b, 0) }, (_, i) => (i % 7) / 7);
    const bytes = (f: Float32Array): Uint8Array => new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
    ws.deliver({ type: 'job/create', name: 'x', config }, bytes(start));
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'values without initFromBackbone');
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, initFromBackbone: true } }, bytes(start.subarray(1)));
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'one value short');
    const bad = Float32Array.from(start);
    bad[3] = NaN;
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, initFromBackbone: true } }, bytes(bad));
    assert.equal((await ws.next('error')).code, 'BAD_FRAME', 'a value that is not finite');
    ws.deliver({ type: 'job/create', name: 'x', config: { ...config, initFromBackbone: true } }, bytes(start));
    const { jobId, step } = await ws.next('job/ready');
    assert.equal(step, 0);
    const stored = decodeAdapter((await jobs.readCheckpoints((await jobs.get('ann', jobId))!))[0]!);
    let at = 0;
    for (const [i, n] of backboneInitNames(shape).entries()) {
      const t = stored.tensors.get(n)!;
      assert.deepEqual(Array.from(t.data), Array.from(start.subarray(at, (at += sizes[i]!))), n);
    }
    assert.ok(stored.tensors.get('out')!.data.every((x) => x === 0), 'Out still starts at zero');
  });

  it('bounds evalIds and the held-out results a job keeps', async () => {
    const { ws, jobs } = await session();
    ws.deliver({ type: 'job/create', name: 'e', config });
    const { jobId } = await ws.next('job/ready');
    const b = batchPayload(1);
    ws.deliver({ type: 'batch/eval', jobId, evalId: 'x'.repeat(MAX_EVAL_ID_CHARS + 1), index: 0, rows: b.rows }, b.payload);
    assert.equal((await ws.next('error')).code, 'BAD_FRAME');
    for (let i = 0; i < MAX_EVALS_PER_JOB + 8; i++) {
      ws.deliver({ type: 'batch/eval', jobId, evalId: `eval-${i}`, index: 0, rows: b.rows }, b.payload);
      await ws.next('eval/result');
    }
    ws.deliver({ type: 'job/cancel', jobId });
    await ws.next('job/done');
    const evals = Object.keys((await jobs.get('ann', jobId))!.evals);
    assert.equal(evals.length, MAX_EVALS_PER_JOB);
    assert.equal(evals[evals.length - 1], `eval-${MAX_EVALS_PER_JOB + 7}`, 'the newest are kept');
  });

  it('a job loaded only to evaluate after it finished does not stay loaded', async () => {
    const { ws, registry } = await session();
    ws.deliver({ type: 'job/create', name: 'f', config: { ...config, totalSteps: 1 } });
    const { jobId } = await ws.next('job/ready');
    const b = batchPayload(1);
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows: b.rows }, b.payload);
    await ws.next('batch/ack');
    ws.deliver({ type: 'job/finish', jobId });
    await ws.next('job/done');
    assert.equal(registry.size, 0);
    ws.deliver({ type: 'batch/eval', jobId, evalId: 'late', index: 0, rows: b.rows }, b.payload);
    await ws.next('eval/result');
    assert.equal(registry.size, 0);
  });

  it('steps with a non-finite loss or gradient change nothing, are acknowledged as skipped, and stop the job after 3 in a row (resumable)', async () => {
    const { ws, jobs } = await session();
    ws.deliver({ type: 'job/create', name: 'n', config: { ...config, totalSteps: 6, checkpointEvery: 100 } });
    const { jobId } = await ws.next('job/ready');
    const fine = batchPayload(1);
    ws.deliver({ type: 'batch/train', jobId, index: 0, rows: fine.rows }, fine.payload);
    assert.notEqual((await ws.next('batch/ack')).skipped, true);
    for (let i = 1; i <= 3; i++) {
      const huge = batchPayload(i + 1, 3e38); // finite on the wire, overflows inside the step
      ws.deliver({ type: 'batch/train', jobId, index: i, rows: huge.rows }, huge.payload);
      if (i < 3) {
        const ack = await ws.next('batch/ack');
        assert.equal(ack.skipped, true);
        assert.equal(ack.loss, 0);
      } else {
        const stop = await ws.next('error');
        assert.equal(stop.code, 'NON_FINITE');
        assert.match(stop.message, new RegExp(`^${MAX_SKIPPED_STEPS_IN_A_ROW} steps in a row`), 'the message counts the skipped steps');
      }
    }
    assert.equal((await jobs.get('ann', jobId))!.state, 'cancelled', 'stopped, as the README says');
    ws.deliver({ type: 'batch/train', jobId, index: 4, rows: fine.rows }, fine.payload);
    assert.equal((await ws.next('error')).code, 'JOB_STATE', 'a stopped job takes no batch');
    ws.deliver({ type: 'job/resume', jobId });
    assert.equal((await ws.next('job/ready')).state, 'training');
    ws.deliver({ type: 'job/finish', jobId });
    await ws.next('job/done');
    assert.equal((await jobs.get('ann', jobId))!.skippedSteps, 3);
    ws.deliver({ type: 'adapter/get', jobId });
    assert.ok((await ws.next('adapter/data')).bytes > 0, 'the weights stayed finite: the adapter was written');
  });

  it('closes a device that does not read its replies', async () => {
    const { ws } = await session({ maxSendBufferBytes: 1000 });
    ws.bufferedAmount = 5000;
    ws.deliver({ type: 'job/list' });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(ws.closedWith, CloseCode.LIMIT);
  });
});
