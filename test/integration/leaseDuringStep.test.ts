import * as assert from 'node:assert/strict';
import { jobShape } from '../../common/AdapterConfig';
import { encodeLayersPayload } from '../../common/batchPayload';
import { PROTOCOL_VERSION } from '../../common/limits';
import type { JobConfig, ModelSpec } from '../../common/messages';
import { SeededRandom } from '../../common/SeededRandom';
import { ServerConnection } from '../../extension/core/connection/ServerConnection';
import { MobiError } from '../../extension/core/MobiError';
import { MobiServer } from '../../server/MobiServer';
import { addUser } from '../../harness/serverProcess';
import { usePostgres } from '../helpers/postgresHooks';
import { tmpDir } from '../helpers/workspaces';

/** A job whose one step takes seconds on one thread (8 layers of 512, reduction 1, 1,024 rows), label-private: no head needed. */
const model: ModelSpec = { fingerprint: 'c'.repeat(64), architecture: 'llama', layers: 8, hiddenSize: 512, vocabularySize: 64, normEpsilon: 1e-5, headDigest: 'd'.repeat(64) };
const config: JobConfig = { tappedLayers: [0, 1, 2, 3, 4, 5, 6, 7], reduction: 1, bits: 8, seqLen: 256, batchSize: 4, totalSteps: 4, learningRate: 1e-3, warmupSteps: 1, seed: 1, checkpointEvery: 100, labelPrivate: true, sideNetwork: 2 };
const LEASE_MS = 400;

describe('a training step longer than its lease (PostgreSQL replicas)', function () {
  this.timeout(120_000);
  const pg = usePostgres();

  it('keeps its lease: the main thread renews it while a worker trains, and another replica cannot take the job meanwhile', async () => {
    const url = pg()!.createDatabase('lease_step');
    const token = addUser(url, 'ann');
    const logs: string[] = [];
    const start = (id: string) => new MobiServer({ dataDir: tmpDir(`replica-${id}`), database: url, replicaId: id, leaseMs: LEASE_MS, port: 0, threads: 1, trainingWorkers: 1, log: (l) => logs.push(`${id}: ${l}`) });
    const a = start('a');
    const b = start('b');
    const { url: aUrl } = await a.start();
    const { url: bUrl } = await b.start();
    try {
      assert.equal(jobShape(config, model).d, 512);
      const device = await ServerConnection.open(aUrl, token, model, { protocol: PROTOCOL_VERSION });
      const { message: ready } = await device.request({ type: 'job/create', name: 'long steps', config });
      const rows = config.seqLen * config.batchSize;
      const rng = new SeededRandom(4);
      const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * model.hiddenSize }, () => rng.normal()));
      const lengths = [256, 256, 256, 256];
      const side = device.expect('batch/side', (m) => m.index === 0, ready.jobId);
      device.send({ type: 'batch/train', jobId: ready.jobId, index: 0, rows, lengths }, encodeLayersPayload(layers, rows, model.hiddenSize, 8));
      await side;
      const ack = device.expect('batch/ack', (m) => m.index === 0, ready.jobId);
      const dy = Float32Array.from({ length: rows * model.hiddenSize }, () => rng.normal() * 1e-3);
      device.send({ type: 'batch/grad', jobId: ready.jobId, index: 0, rows, lossSum: rows, tokens: rows }, encodeLayersPayload([dy], rows, model.hiddenSize, 8));
      // While the step runs on replica A's worker, a second device asks replica B for the job again and again.
      const other = await ServerConnection.open(bUrl, token, model);
      const refusals: string[] = [];
      let stepDone = false;
      const asking = (async () => {
        while (!stepDone) {
          const err = await other.request({ type: 'job/resume', jobId: ready.jobId }).then(() => undefined, (e: unknown) => e);
          refusals.push(err instanceof MobiError ? err.code : `taken: ${String(err)}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      const { message: acked } = await ack;
      stepDone = true;
      await asking;
      other.close();
      process.stdout.write(`      the step took ${acked.seconds.toFixed(2)} s against a ${LEASE_MS / 1000} s lease; replica B was refused ${refusals.length} times\n`);
      assert.ok(acked.seconds * 1000 > 2 * LEASE_MS, `the premise: the step (${acked.seconds} s) outlasts the lease`);
      assert.equal(acked.step, 1);
      assert.ok(refusals.length > 0 && refusals.every((c) => c === 'JOB_MOVED'), `B never took the job: ${refusals.join(', ')}`);
      assert.equal((await a.metrics.leaseLosses.get()).values[0]?.value ?? 0, 0, 'replica A lost no lease');
      assert.ok(!logs.some((l) => /lease was taken over/.test(l)), logs.join('\n'));
      device.close();
    } finally {
      await b.stop();
      await a.stop();
    }
  });
});
