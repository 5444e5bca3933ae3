import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Client } from 'pg';
import { WebSocket } from 'ws';
import type { ModelSpec } from '../../common/messages';
import { CloseCode } from '../../common/limits';
import { ServerConnection } from '../../extension/core/connection/ServerConnection';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../../extension/core/job/FineTuneJob';
import { MobiError } from '../../extension/core/MobiError';
import { startNginx } from '../../harness/nginx';
import { usePostgres } from '../helpers/postgresHooks';
import { FailoverClock, healthOf, Replica, startReplica as startReplicaOf } from '../../harness/cluster';
import { addUser, freePort, killHard, SERVER_CLI } from '../../harness/serverProcess';
import { config, model } from '../helpers/sessionHarness';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';
import { signInStatus } from '../helpers/signIn';

const LEASE_SECONDS = 2;
const MODEL_OPTS = { layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 2 };

const startReplica = (url: string, id: string, port: number, advertise: string, extra: string[] = []): Promise<Replica> => startReplicaOf(url, id, port, advertise, { leaseSeconds: LEASE_SECONDS, extra });

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [SERVER_CLI, ...args], { encoding: 'utf8' });
}

describe('team server replicas sharing PostgreSQL, behind nginx', function () {
  this.timeout(300_000);
  const postgres = usePostgres();
  let url = '';
  before(function () {
    if (!postgres()) this.skip();
    url = postgres()!.createDatabase('cluster');
  });

  it('refuses to start on an unreachable database: a typed error naming the URL without its password, exit 1', () => {
    const r = cli(['start', '--port', '0', '--database', 'postgres://admin:hunter2@127.0.0.1:1/mobillm']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^error\[DATABASE_UNREACHABLE\]: .*postgres:\/\/admin@127\.0\.0\.1:1\/mobillm/m);
    assert.doesNotMatch(r.stderr + r.stdout, /hunter2/);
  });

  it('mobillm-server migrate copies a data folder; the users then sign in against the database', () => {
    const dir = tmpDir('migrate-cli');
    const added = cli(['users', 'add', 'olga', '--data', dir]);
    assert.equal(added.status, 0, added.stderr);
    const target = postgres()!.createDatabase('migrated');
    const r = cli(['migrate', '--from', dir, '--database', target]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim()).migrated, { users: 1, jobs: 0, checkpoints: 0, adapters: 0, heads: 0 });
    assert.match(cli(['users', 'list', '--database', target]).stdout, /^olga\t.*\tactive$/m);
    const again = cli(['migrate', '--from', dir]);
    assert.equal(again.status, 1, 'no database named');
    assert.match(again.stderr, /error\[BAD_CONFIG\]/);
  });

  describe('two replicas and nginx', () => {
    const replicas: Replica[] = [];
    let lb: { url: string; stop: () => void } | undefined;
    let token = '';
    const ws = makeWorkspace(7);
    const options = (extra: Partial<FineTuneOptions> = {}): FineTuneOptions => ({
      workspace: ws, model: tinyModel(MODEL_OPTS), storeDir: tmpDir('store'), seqLen: 32, batchSize: 4, steps: 16, checkpointEvery: 4, threads: 1, learningRate: 5e-3, seed: 3,
      server: { url: lb!.url, token }, ...extra,
    });

    before(async function () {
      const lbPort = await freePort();
      const ports = [await freePort(), await freePort()];
      const n = await startNginx(lbPort, ports);
      if ('skip' in n) {
        console.log(`      skipped: ${n.skip}`);
        this.skip();
      }
      lb = n;
      for (const [i, port] of ports.entries()) replicas.push(await startReplica(url, `replica-${i}`, port, `${n.url}/r/${i}`));
      token = addUser(url, 'alice');
    });
    after(async () => {
      for (const r of replicas) await killHard(r.proc);
      lb?.stop();
    });

    it('/healthz and /metrics name the replica and the store and report the database reachable; nginx passes /healthz', async () => {
      for (const r of replicas) {
        const h = await healthOf(r.port);
        assert.equal(h.status, 200);
        assert.equal(h.body.replica, r.id);
        assert.deepEqual(h.body.store, { kind: 'postgres', where: url, reachable: true });
        const metrics = await (await fetch(`http://127.0.0.1:${r.port}/metrics`)).text();
        assert.match(metrics, new RegExp(`mobillm_replica_info\\{replica="${r.id}",store="postgres"\\} 1`));
        assert.match(metrics, /mobillm_store_reachable 1/);
      }
      const through = await fetch(`${lb!.url.replace('ws:', 'http:')}/healthz`);
      assert.equal(through.status, 200);
      assert.equal((await fetch(`${lb!.url.replace('ws:', 'http:')}/metrics`)).status, 404, 'metrics are not published through the load balancer');
    });

    let uninterrupted: FineTuneResult;
    it('a fine-tune through nginx trains on one replica (the baseline for the failover)', async () => {
      uninterrupted = await new FineTuneJob(options()).run();
      assert.equal(uninterrupted.steps, 16);
      assert.ok(uninterrupted.heldOutLossAfter < uninterrupted.heldOutLossBefore);
    });

    it('survives kill -9 of the replica training it: another takes over after the lease, from the last checkpoint, with the same steps, tokens and held-out loss', async () => {
      const clock = new FailoverClock();
      let victim: Replica | undefined;
      let triggered = false;
      const r = await new FineTuneJob(
        options({
          log: (line) => clock.log(line),
          onProgress: (p) => {
            if (p.phase === 'training') clock.progress(p.step);
            if (!triggered && p.phase === 'training' && p.step >= 6) {
              triggered = true;
              void (async () => {
                const owners = await Promise.all(replicas.map(async (x) => ({ x, jobs: (await healthOf(x.port)).body.jobs })));
                victim = owners.find((o) => o.jobs > 0)?.x;
                assert.ok(victim, 'one replica holds the job');
                await killHard(victim.proc);
                clock.killedAt = Date.now();
              })();
            }
          },
        }),
      ).run();
      assert.ok(victim, 'a replica was killed during training');
      assert.equal(r.steps, uninterrupted.steps);
      assert.equal(r.trainTokens, uninterrupted.trainTokens, 'every token counted once');
      assert.ok(Math.abs(r.heldOutLossAfter - uninterrupted.heldOutLossAfter) <= 1e-4, `${r.heldOutLossAfter} vs ${uninterrupted.heldOutLossAfter}`);
      console.log(`      failover: first step on the new replica ${clock.seconds.toFixed(2)} s after kill -9 (lease ${LEASE_SECONDS} s)`);
      assert.ok(clock.firstStepAfter > clock.killedAt, 'a step was acknowledged on a connection made after the kill');
      const survivor = replicas.find((x) => x !== victim)!;
      assert.equal((await healthOf(survivor.port)).status, 200);
      // The killed replica comes back for the tests that follow.
      replicas[replicas.indexOf(victim!)] = await startReplica(url, victim!.id, victim!.port, `${lb!.url}/r/${replicas.indexOf(victim!)}`);
    });

    it('a paused owner that wakes after another replica took its job over learns it and stops training it; the job finishes with the same result', async () => {
      let triggered = false;
      let victim: Replica | undefined;
      let takeover: Promise<void> | undefined;
      const r = await new FineTuneJob(
        options({
          onProgress: (p) => {
            if (triggered || p.phase !== 'training' || p.step < 6) return;
            triggered = true;
            takeover = (async () => {
              const owners = await Promise.all(replicas.map(async (x) => ({ x, jobs: (await healthOf(x.port)).body.jobs })));
              const paused = owners.find((o) => o.jobs > 0)!.x;
              victim = paused;
              paused.proc.kill('SIGSTOP'); // paused, as by a long GC or a partition: its sockets stay open
              try {
                const db = new Client({ connectionString: url });
                await db.connect();
                const { rows } = await db.query<{ id: string; model: ModelSpec }>('SELECT id, record->\'model\' AS model FROM jobs WHERE lease_owner = $1', [paused.id]);
                await db.end();
                // Another device of the user resumes the job on the other replica: it waits out the lease and takes the job.
                const other = replicas.find((x) => x !== paused)!;
                const conn = await ServerConnection.open(`ws://127.0.0.1:${other.port}`, token, rows[0]!.model);
                // While the paused owner still looks alive (seen within half a lease) the answer points at it.
                for (let tries = 0; ; tries++) {
                  const moved = await conn.request({ type: 'job/resume', jobId: rows[0]!.id }).then(
                    () => false,
                    (e: unknown) => {
                      if (MobiError.is(e, 'JOB_MOVED') && tries < 20) return true;
                      throw e;
                    },
                  );
                  if (!moved) break;
                  await new Promise((r) => setTimeout(r, 250));
                }
                conn.close();
              } finally {
                paused.proc.kill('SIGCONT');
              }
            })();
          },
        }),
      ).run();
      await takeover;
      assert.ok(victim, 'the owner was paused');
      assert.equal(r.steps, uninterrupted.steps);
      assert.equal(r.trainTokens, uninterrupted.trainTokens, 'every token counted once');
      assert.ok(Math.abs(r.heldOutLossAfter - uninterrupted.heldOutLossAfter) <= 1e-4, `${r.heldOutLossAfter} vs ${uninterrupted.heldOutLossAfter}`);
      assert.ok(victim!.output.some((l) => /lease was taken over by another replica; stopped training it here/.test(l)), 'the woken owner learned it lost the job');
    });

    it('survives losing the database mid-job: training pauses at the next checkpoint, the device waits, and the job finishes when it returns, nothing lost or counted twice', async () => {
      let down = false;
      let back: Promise<void> | undefined;
      const logs: string[] = [];
      const r = await new FineTuneJob(
        options({
          log: (line) => logs.push(line),
          onProgress: (p) => {
            if (!down && p.phase === 'training' && p.step >= 5) {
              down = true;
              postgres()!.kill();
              back = new Promise((resolve) => setTimeout(resolve, 3000)).then(() => postgres()!.start());
            }
          },
        }),
      ).run();
      await back;
      assert.ok(down, 'the database was stopped during training');
      assert.ok(logs.some((l) => /STORE_UNAVAILABLE|SERVER_UNREACHABLE|CONNECTION_LOST/.test(l)), 'the device was told to wait');
      assert.equal(r.steps, uninterrupted.steps);
      assert.equal(r.trainTokens, uninterrupted.trainTokens, 'every token counted once');
      assert.ok(Math.abs(r.heldOutLossAfter - uninterrupted.heldOutLossAfter) <= 1e-4, `${r.heldOutLossAfter} vs ${uninterrupted.heldOutLossAfter}`);
      for (const x of replicas) assert.equal((await healthOf(x.port)).body.store.reachable, true, 'reachable again');
    });

    it('revoking a user on one replica closes their session on another within a second', async () => {
      const robToken = addUser(url, 'rob');
      const sock = new WebSocket(`ws://127.0.0.1:${replicas[1]!.port}`, { headers: { authorization: `Bearer ${robToken}` } });
      await new Promise<void>((resolve, reject) => {
        sock.once('open', () => resolve());
        sock.once('error', reject);
      });
      const closed = new Promise<{ code: number; at: number }>((resolve) => sock.once('close', (code) => resolve({ code, at: Date.now() })));
      const revoked = cli(['users', 'revoke', 'rob', '--database', url]);
      const done = Date.now();
      assert.equal(revoked.status, 0, revoked.stderr);
      const { code, at } = await closed;
      assert.equal(code, CloseCode.UNAUTHORIZED, 'closed as unauthorized');
      assert.ok(at - done < 1000, `closed ${at - done} ms after the revocation`);
    });

    it('failed sign-ins count across replicas: guesses spread over two meet the one limit', async () => {
      const good = addUser(url, 'gus');
      const attempt = (port: number, token: string): Promise<number> => signInStatus(`ws://127.0.0.1:${port}`, token);
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        statuses.push(await attempt(replicas[i % 2]!.port, `gus.wrong${i}`));
        await new Promise((r) => setTimeout(r, 50)); // the shared count is written after the answer
      }
      assert.deepEqual(statuses, Array(10).fill(401), 'each replica saw only 5 of them');
      assert.equal(await attempt(replicas[0]!.port, good), 429, 'the 11th try, even with the right token, waits for the window');
    });

    it('the per-user job limit holds across replicas; a job asked of the other replica is pointed at its owner', async () => {
      const lim = [await freePort(), await freePort()];
      const limited = [
        await startReplica(url, 'limited-0', lim[0]!, `ws://127.0.0.1:${lim[0]}`, ['--max-jobs-per-user', '1']),
        await startReplica(url, 'limited-1', lim[1]!, `ws://127.0.0.1:${lim[1]}`, ['--max-jobs-per-user', '1']),
      ];
      try {
        const tok = addUser(url, 'lena');
        const spec = model;
        const c0 = await ServerConnection.open(`ws://127.0.0.1:${lim[0]}`, tok, spec);
        const c1 = await ServerConnection.open(`ws://127.0.0.1:${lim[1]}`, tok, spec);
        const lp = { ...config, labelPrivate: true };
        const ready = (await c0.request({ type: 'job/create', name: 'a', config: lp })).message;
        const refused = await c1.request({ type: 'job/create', name: 'b', config: lp }).catch((e: unknown) => e);
        assert.ok(refused instanceof MobiError && /at most 1 jobs/.test(refused.message), String(refused));
        const moved = await c1.request({ type: 'job/resume', jobId: ready.jobId }).catch((e: unknown) => e);
        assert.ok(moved instanceof MobiError && moved.code === 'JOB_MOVED', String(moved));
        assert.equal(moved.location, `ws://127.0.0.1:${lim[0]}`);
        c0.close();
        c1.close();
      } finally {
        for (const r of limited) await killHard(r.proc);
      }
    });
  });
});
