/**
 * The team server as a cluster, on this machine, with real processes: a
 * PostgreSQL from Debian's package in a temporary folder, replicas started
 * with `mobillm-server start --database`, nginx with the repository's
 * configuration, and devices fine-tuning the built-in tiny model on this
 * repository's source tree.
 *
 *  1. tokensPerSecondPostgresOverFile: one job on one replica (pinned to core
 *     1), PostgreSQL store over file store, runs alternated (median of each);
 *     checkpoints every 10 steps so that their writes are on the measured path.
 *  2. eight jobs at once (eight users) on two replicas through nginx over one
 *     replica, the jobs each replica took, and each replica's seconds of
 *     database waits per second (summed over concurrent operations).
 *  3. failoverSeconds: kill -9 of the replica training a job (through nginx)
 *     to the first step acknowledged on a new connection, with leaseSeconds.
 *
 *   npm run bench:cluster [-- --steps 60 --repeats 7 --jobs 8]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../extension/core/job/FineTuneJob';
import { ensureDefaultModel } from '../extension/core/model/defaultModel';
import { FailoverClock, healthOf, Replica, startReplica } from '../harness/cluster';
import { startNginx } from '../harness/nginx';
import { startPostgres, TestPostgres } from '../harness/postgres';
import { addUser, freePort, killHard, startServerProcess } from '../harness/serverProcess';
import { BENCH_CACHE, machineDescription, median } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const LEASE_SECONDS = 5;
const arg = (name: string, fallback: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};

async function fineTune(options: Partial<FineTuneOptions> & Pick<FineTuneOptions, 'server'>, steps: number): Promise<FineTuneResult> {
  const store = fs.mkdtempSync(path.join(BENCH_CACHE, 'cluster-'));
  try {
    return await new FineTuneJob({ workspace: path.resolve(__dirname, '..', '..'), model: ensureDefaultModel(BENCH_CACHE), storeDir: store, steps, seed: 1, threads: 1, checkpointEvery: 10, maxHeldOutSequences: 4, ...options }).run();
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

const tokensPerSecond = (r: FineTuneResult): number => r.trainTokens / r.timings.trainWallSeconds;

/** One job on one replica pinned to core 1: the file store or a new database. */
async function oneJob(pg: TestPostgres, kind: 'file' | 'postgres', run: number, steps: number): Promise<number> {
  const port = await freePort();
  const data = fs.mkdtempSync(path.join(BENCH_CACHE, 'cluster-data-'));
  let token: string;
  let args: string[] = ['--threads', '1'];
  if (kind === 'file') token = addUser(data, 'bench');
  else {
    const url = pg.createDatabase(`one${run}`);
    token = addUser(url, 'bench');
    args = [...args, '--database', url];
  }
  const server = await startServerProcess(data, port, { cpu: 1, args });
  try {
    const r = await fineTune({ server: { url: server.url, token } }, steps);
    return tokensPerSecond(r);
  } finally {
    await killHard(server.proc);
    fs.rmSync(data, { recursive: true, force: true });
  }
}

/** Per replica: seconds it has waited for the database, and jobs created on it. */
async function counters(replicas: Replica[]): Promise<{ storeBusy: number; jobsCreated: number }[]> {
  return Promise.all(
    replicas.map(async (r) => {
      const text = await (await fetch(`http://127.0.0.1:${r.port}/metrics`)).text();
      const metric = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
      return { storeBusy: metric('mobillm_store_busy_seconds'), jobsCreated: metric('mobillm_jobs_created_total') };
    }),
  );
}

async function main(): Promise<void> {
  const steps = arg('steps', 60);
  const repeats = arg('repeats', 7);
  const jobs = arg('jobs', 8);
  const started = await startPostgres();
  if ('skip' in started) {
    process.stderr.write(`bench:cluster cannot run: ${started.skip}\n`);
    process.exit(1);
  }
  const pg = started;
  const replicas: Replica[] = [];
  let lb: { url: string; stop: () => void } | undefined;
  try {
    // 1. One job: PostgreSQL over the file store.
    const rates: Record<'file' | 'postgres', number[]> = { file: [], postgres: [] };
    for (let i = 0; i < repeats; i++) {
      for (const kind of ['file', 'postgres'] as const) {
        rates[kind].push(await oneJob(pg, kind, i, steps));
        process.stderr.write(`one job, ${kind} store: ${rates[kind].at(-1)!.toFixed(0)} tokens/s\n`);
      }
    }
    const ratio = median(rates.postgres) / median(rates.file);

    // Two replicas behind nginx, sharing one database.
    const url = pg.createDatabase('cluster');
    const ports = [await freePort(), await freePort()];
    const n = await startNginx(await freePort(), ports);
    if ('skip' in n) throw new Error(`bench:cluster needs nginx: ${n.skip}`);
    lb = n;
    for (const [i, port] of ports.entries()) replicas.push(await startReplica(url, `replica-${i}`, port, `${n.url}/r/${i}`, { leaseSeconds: LEASE_SECONDS }));
    // 2. Eight jobs at once: two replicas (through nginx) over one.
    const together = async (serverUrl: string, only?: Replica): Promise<{ tokensPerSecond: number; wall: number; jobsPerReplica: number[]; storeWaitSecondsPerSecond: number[] }> => {
      const before = await counters(only ? [only] : replicas);
      const t0 = Date.now();
      // One user per job: a user may have at most 4 jobs loaded at once.
      const results = await Promise.all(Array.from({ length: jobs }, (_, i) => fineTune({ server: { url: serverUrl, token: tokens[i]! }, seed: 1 + i }, steps / 2)));
      const wall = (Date.now() - t0) / 1000;
      const after = await counters(only ? [only] : replicas);
      return {
        tokensPerSecond: results.reduce((s, r) => s + r.trainTokens, 0) / wall,
        wall,
        jobsPerReplica: after.map((a, i) => a.jobsCreated - before[i]!.jobsCreated),
        // Waits of concurrent operations add up: 1.0 means one operation waited on the database at every moment, on average.
        storeWaitSecondsPerSecond: after.map((a, i) => (a.storeBusy - before[i]!.storeBusy) / wall),
      };
    };
    const tokens = Array.from({ length: jobs }, (_, i) => addUser(url, `team${i}`));
    const one = await together(`ws://127.0.0.1:${replicas[0]!.port}`, replicas[0]);
    const two = await together(n.url);
    process.stderr.write(`${jobs} jobs: one replica ${one.tokensPerSecond.toFixed(0)} tokens/s, two ${two.tokensPerSecond.toFixed(0)} tokens/s\n`);

    // 3. Failover through nginx (after the eight jobs: nginx leaves a killed replica out for its fail_timeout).
    const token = addUser(url, 'bench');
    const clock = new FailoverClock();
    let triggered = false;
    let killed: Replica | undefined;
    await fineTune(
      {
        server: { url: n.url, token },
        log: (line) => clock.log(line),
        onProgress: (p) => {
          if (p.phase === 'training') clock.progress(p.step);
          if (!triggered && p.phase === 'training' && p.step >= steps / 3) {
            triggered = true;
            void (async () => {
              const owners = await Promise.all(replicas.map(async (x) => ({ x, jobs: (await healthOf(x.port)).body.jobs })));
              const victim = owners.find((o) => o.jobs > 0)!.x;
              await killHard(victim.proc);
              clock.killedAt = Date.now();
              killed = victim;
            })();
          }
        },
      },
      steps,
    );
    process.stderr.write(`failover: ${clock.seconds.toFixed(2)} s (lease ${LEASE_SECONDS} s)\n`);
    // The killed replica comes back (as a restarted pod does) only after the job, so the takeover above was another replica's.
    if (killed) {
      const i = replicas.indexOf(killed);
      replicas[i] = await startReplica(url, killed.id, killed.port, `${n.url}/r/${i}`, { leaseSeconds: LEASE_SECONDS });
    }

    const out = {
      tokensPerSecondPostgresOverFile: ratio,
      goalTokensPerSecondPostgresOverFile: 0.95,
      oneJob: { steps, checkpointEvery: 10, repeats, tokensPerSecond: rates, serverPinnedToCore: 1 },
      failoverSeconds: clock.seconds,
      leaseSeconds: LEASE_SECONDS,
      goalFailoverSeconds: `leaseSeconds + 2 = ${LEASE_SECONDS + 2}`,
      eightJobs: {
        jobs, stepsEach: steps / 2,
        oneReplica: one, twoReplicasThroughNginx: two,
        twoOverOne: two.tokensPerSecond / one.tokensPerSecond,
        note: 'devices, replicas, PostgreSQL and nginx share this machine\'s 2 cores: the CPU bounds the cluster here',
      },
      model: 'built-in tiny model (4 layers, d 128), this repository\'s source tree',
      machine: machineDescription(),
    };
    writeResult('cluster.json', out);
    process.stdout.write(`${JSON.stringify({ tokensPerSecondPostgresOverFile: ratio, failoverSeconds: clock.seconds, leaseSeconds: LEASE_SECONDS, twoOverOne: out.eightJobs.twoOverOne })}\n`);
  } finally {
    for (const r of replicas) await killHard(r.proc);
    lb?.stop();
    pg.remove();
  }
}

void main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
