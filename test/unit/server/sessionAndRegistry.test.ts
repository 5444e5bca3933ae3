import * as assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { WebSocket } from 'ws';
import { encodeBatchPayload } from '../../../common/batchPayload';
import { decodeServerFrame, encodeFrame } from '../../../common/codec';
import { canTransition, JOB_STATES } from '../../../common/JobState';
import type { DeviceMessage, JobConfig, ModelSpec, ServerMessage } from '../../../common/messages';
import { SeededRandom } from '../../../common/SeededRandom';
import { DeviceSession } from '../../../server/DeviceSession';
import { JobRegistry } from '../../../server/JobRegistry';
import { ServerMetrics } from '../../../server/ServerMetrics';
import { SessionContext } from '../../../server/SessionContext';
import { HeadStore } from '../../../server/storage/HeadStore';
import { JobStore } from '../../../server/storage/JobStore';
import { OnnxEngine } from '../../../server/training/onnx/OnnxEngine';
import { tmpDir } from '../../helpers/workspaces';

const D = 16;
const V = 40;
const L = 2;
const model: ModelSpec = { fingerprint: 'a'.repeat(64), architecture: 'llama', layers: L, hiddenSize: D, vocabularySize: V, normEpsilon: 1e-5 };
const config: JobConfig = { tappedLayers: [0, 1], reduction: 4, bits: 8, seqLen: 8, batchSize: 1, totalSteps: 3, learningRate: 1e-2, warmupSteps: 1, seed: 1, checkpointEvery: 2 };

function storesWithHead(): { heads: HeadStore; jobs: JobStore } {
  const dir = tmpDir('server-unit');
  const heads = new HeadStore(dir);
  const rng = new SeededRandom(3);
  heads.save(model.fingerprint, V, D, Float32Array.from({ length: D }, () => 1), Uint16Array.from({ length: V * D }, () => 0x3c00 ^ (rng.next() < 0.5 ? 0x8000 : 0)));
  return { heads, jobs: new JobStore(dir) };
}

function batchPayload(seed: number, poison?: number): { payload: Buffer; rows: number } {
  const rng = new SeededRandom(seed);
  const rows = config.seqLen;
  const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * D }, () => rng.normal()));
  if (poison !== undefined) layers[1]![5] = poison;
  const targets = Int32Array.from({ length: rows }, (_, i) => (i * 7 + seed) % V);
  return { payload: encodeBatchPayload({ rows, layers, targets, mask: new Uint8Array(rows).fill(1) }, D, 8), rows };
}

/** The socket end a DeviceSession talks to, driven by the test: frames in, decoded frames out. */
class SocketEnd extends EventEmitter {
  readyState: number = WebSocket.OPEN;
  readonly received: ServerMessage[] = [];
  closedWith: number | undefined;
  send(data: Buffer): void {
    this.received.push(decodeServerFrame(data).message);
  }
  close(code: number): void {
    this.closedWith = code;
    this.readyState = WebSocket.CLOSED;
  }
  ping(): void {}
  terminate(): void {
    this.readyState = WebSocket.CLOSED;
  }
  deliver(m: DeviceMessage, payload?: Uint8Array): void {
    this.emit('message', encodeFrame(m, payload), true);
  }
  async next<T extends ServerMessage['type']>(type: T): Promise<ServerMessage<T>> {
    for (let i = 0; i < 400; i++) {
      const at = this.received.findIndex((m) => m.type === type || m.type === 'error');
      if (at >= 0) {
        const [m] = this.received.splice(at, 1);
        if (m!.type === 'error' && type !== 'error') assert.fail(`expected ${type}, got error ${m!.code}: ${m!.message}`);
        return m as ServerMessage<T>;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return assert.fail(`no ${type} arrived`);
  }
}

describe('server: session context and job registry', function () {
  this.timeout(60_000);
  let engine: OnnxEngine;
  before(async () => (engine = await OnnxEngine.create({ threads: 1 })));
  after(() => engine.dispose());

  it('job states: one table of allowed transitions, and nothing leaves finished', () => {
    assert.ok(canTransition('training', 'finished'));
    assert.ok(canTransition('training', 'cancelled'));
    assert.ok(canTransition('cancelled', 'training'));
    for (const to of JOB_STATES) assert.equal(canTransition('finished', to), false);
    assert.equal(canTransition('cancelled', 'finished'), false);
  });

  it('the registry loads a job once, shares its model head, counts training jobs per user, and checkpoints on unloadAll', async () => {
    const { heads, jobs } = storesWithHead();
    const counts: number[] = [];
    const registry = new JobRegistry(engine, jobs, heads, (n) => counts.push(n));
    const a = jobs.create('ann', 'a', model, config);
    const b = jobs.create('ann', 'b', model, config);
    const c = jobs.create('bob', 'c', model, config);
    const ja = registry.load(a);
    assert.equal(registry.load(jobs.get('ann', a.id)!), ja, 'the same job object for the same record');
    registry.load(b);
    registry.load(c);
    assert.equal(registry.size, 3);
    assert.equal(registry.loadedHeads, 1, 'one head for three jobs of one model');
    assert.equal(registry.trainingJobsOf('ann'), 2);
    assert.equal(registry.trainingJobsOf('bob'), 1);
    const { payload, rows } = batchPayload(1);
    const { decodeBatchPayload } = await import('../../../common/batchPayload.js');
    await ja.train(0, decodeBatchPayload(payload, rows, 2, D, 8, V));
    await registry.unload(ja);
    assert.equal(registry.size, 2);
    assert.equal(registry.loadedHeads, 1);
    assert.equal(await registry.unloadAll(), 0);
    assert.equal(registry.size, 0);
    assert.equal(registry.loadedHeads, 0, 'the head is freed with its last job');
    assert.deepEqual(counts, [1, 2, 3, 2, 1, 0]);
    assert.ok(jobs.readCheckpoint(jobs.get('ann', b.id)!), 'unloadAll checkpointed the training job');
  });

  it('a session works through its context only: hello, create, train, cancel, resume, finish; its limits come from the context', async () => {
    const { heads, jobs } = storesWithHead();
    const metrics = new ServerMetrics();
    const log: string[] = [];
    const ctx: SessionContext = { heads, jobs, registry: new JobRegistry(engine, jobs, heads), metrics, limits: { credits: 1, maxJobsPerUser: 1 }, backend: 'test-backend', log: (l) => log.push(l) };
    const ws = new SocketEnd();
    new DeviceSession(ctx, ws as unknown as WebSocket, 'ann');
    ws.deliver({ type: 'session/hello', protocol: 1, client: 'test', model });
    const welcome = await ws.next('session/welcome');
    assert.equal(welcome.backend, 'test-backend');
    assert.equal(welcome.credits, 1);
    assert.equal(welcome.headCached, true);

    ws.deliver({ type: 'job/create', name: 'one', config });
    const ready = await ws.next('job/ready');
    assert.equal(ready.state, 'training');
    ws.deliver({ type: 'job/create', name: 'two', config });
    assert.equal((await ws.next('error')).code, 'LIMIT', 'maxJobsPerUser from the context');

    const first = batchPayload(1);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 0, rows: first.rows }, first.payload);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 1, rows: first.rows }, first.payload);
    assert.equal((await ws.next('error')).code, 'NO_CREDIT', 'credits from the context');
    assert.equal((await ws.next('batch/ack')).index, 0);

    const poisoned = batchPayload(2, Number.NaN);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 1, rows: poisoned.rows }, poisoned.payload);
    const refused = await ws.next('error');
    assert.equal(refused.code, 'BAD_FRAME', 'NaN activations are a typed error');
    assert.equal(refused.jobId, ready.jobId);
    const next = batchPayload(3);
    ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: 2, rows: next.rows }, next.payload);
    const afterSkip = await ws.next('batch/ack');
    assert.equal(afterSkip.index, 2, 'the poisoned batch was skipped and the job goes on');
    assert.ok(Number.isFinite(afterSkip.loss) && afterSkip.loss > 0);

    ws.deliver({ type: 'job/cancel', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'cancelled');
    assert.equal(jobs.get('ann', ready.jobId)!.state, 'cancelled');
    assert.equal(ctx.registry.size, 0, 'a cancelled job is unloaded');

    ws.deliver({ type: 'job/resume', jobId: ready.jobId });
    const resumed = await ws.next('job/ready');
    assert.equal(resumed.state, 'training');
    assert.equal(jobs.get('ann', ready.jobId)!.state, 'training', 'the resumed state is on disk');
    for (let i = resumed.nextIndex; i < config.totalSteps; i++) {
      const b = batchPayload(i + 1);
      ws.deliver({ type: 'batch/train', jobId: ready.jobId, index: i, rows: b.rows }, b.payload);
      await ws.next('batch/ack');
    }
    ws.deliver({ type: 'job/finish', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'finished');
    ws.deliver({ type: 'job/resume', jobId: ready.jobId });
    assert.equal((await ws.next('job/ready')).state, 'finished');
    ws.deliver({ type: 'job/cancel', jobId: ready.jobId });
    assert.equal((await ws.next('job/done')).state, 'finished', 'cancelling a finished job leaves it finished');
    assert.equal(jobs.get('ann', ready.jobId)!.state, 'finished');
    assert.ok(log.some((l) => l.startsWith('device connected')));
    assert.ok(!log.some((l) => /[^\x20-\x7e]/.test(l)), 'log lines are plain ids and numbers');
  });
});
