/**
 * Load: what a team server and an extension host do while training runs.
 *
 *   npm run bench:load                         (both parts; writes bench/results/load.json)
 *   npm run bench:load -- --part server        (or extension-host; --devices 1,2,4,8 --stores file,postgres --steps 30)
 *   npm run bench:load -- --part extension-host --context-rate 0.5   (the same with training context: extensionHostTrainingContext)
 *   npm run bench:load -- --part extension-host --label-private      (a team server process, label-private: extensionHostLabelPrivate)
 *
 * extension host: a fine-tune of the Qwen2.5-0.5B shape (Q8_0, 151,936
 *   vocabulary, defaults, the embedded server) run by this process, as VS
 *   Code's extension host runs it; this process's event loop is measured the
 *   whole time (perf_hooks monitorEventLoopDelay, and a timer due every 20 ms).
 * server: one server process (the file store, then PostgreSQL) and N
 *   simulated devices (1, 2, 4, 8; one user each) replaying frames recorded
 *   once from a real fine-tune (no device forward during the run: the server
 *   is what is measured). Beside them, a probe process of its own times
 *   `GET /healthz` every 50 ms and a sign-in every 250 ms; the server reports
 *   its own main-thread delay and lease losses through /metrics.
 */
import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Command } from 'commander';
import { decodeDeviceFrame } from '../common/codec';
import type { DeviceMessage, JobConfig, ModelSpec } from '../common/messages';
import { ServerConnection } from '../extension/core/connection/ServerConnection';
import { CreditWindow } from '../extension/core/job/CreditWindow';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { writeTinyModel } from '../extension/core/model/tinyModel';
import type { ProbeTimes } from '../harness/loadProbe';
import { startPostgres, TestPostgres } from '../harness/postgres';
import { addUser, freePort, killHard, startServerProcess } from '../harness/serverProcess';
import { BENCH_CACHE, machineDescription, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const ROOT = path.resolve(__dirname, '..', '..');
const PROBE = path.join(ROOT, 'out', 'harness', 'loadProbe.js');

interface Frame {
  message: DeviceMessage;
  payload: Buffer;
}

/** What the simulated devices replay: the model, the head upload, the job's config and its training batches. */
interface Recording {
  model: ModelSpec;
  head: Frame[];
  config: JobConfig;
  batches: Frame[];
}

const log = (line: string): void => void process.stderr.write(`${line}\n`);

/** A workspace of real source: commander's lib and typings and ignore's index (as the issues' fixed fine-tune uses). */
function workspace(): string {
  const dir = path.join(BENCH_CACHE, 'load', 'workspace');
  if (!fs.existsSync(dir)) {
    const nm = path.join(ROOT, 'node_modules');
    fs.mkdirSync(dir, { recursive: true });
    fs.cpSync(path.join(nm, 'commander', 'lib'), path.join(dir, 'lib'), { recursive: true });
    fs.cpSync(path.join(nm, 'commander', 'typings'), path.join(dir, 'typings'), { recursive: true });
    for (const f of ['index.js', 'index.d.ts']) fs.copyFileSync(path.join(nm, 'ignore', f), path.join(dir, f));
  }
  return dir;
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

const round = (x: number, digits = 1): number => Number(x.toFixed(digits));

/** The extension host's event loop during an embedded fine-tune of the Qwen shape. */
async function extensionHost(steps: number, contextRate: number, labelPrivate = false): Promise<Record<string, unknown>> {
  const model = qwenShapedModel('q8_0');
  // Label-private: a team server of its own (a process), so the head's loss, its update and their snapshots run here.
  const dataDir = labelPrivate ? fs.mkdtempSync(path.join(BENCH_CACHE, 'load-lp-server-')) : undefined;
  const server = dataDir ? { token: addUser(dataDir, 'bench'), ...(await startServerProcess(dataDir, await freePort())) } : undefined;
  const h = monitorEventLoopDelay({ resolution: 10 });
  const late: number[] = [];
  let due = performance.now() + 20;
  const timer = setInterval(() => {
    const now = performance.now();
    late.push(Math.max(0, now - due));
    due = now + 20;
  }, 20);
  h.enable();
  const started = Date.now();
  let r: Awaited<ReturnType<FineTuneJob['run']>>;
  try {
    r = await new FineTuneJob({
      workspace: workspace(), model, storeDir: fs.mkdtempSync(path.join(BENCH_CACHE, 'load-host-')), steps, contextRate, log: () => undefined,
      ...(server ? { server: { url: server.url, token: server.token }, checkpointEvery: 10 } : {}),
    }).run();
  } finally {
    h.disable();
    clearInterval(timer);
    if (server) await killHard(server.proc);
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  }
  const ms = (ns: number): number => round(ns / 1e6);
  return {
    model: `${path.basename(model)} (Qwen2.5-0.5B shape, Q8_0, 151,936 vocabulary), ${r.steps} steps, ${contextRate > 0 ? `defaults but --context-rate ${contextRate}` : 'defaults'}, ${server ? 'a team server process (label-private: the head\'s loss and the head update on the device, snapshots every 10 steps)' : 'embedded server (a child process)'}`,
    seconds: round((Date.now() - started) / 1000),
    loopDelayMs: { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) },
    timer20ms: { ticks: late.length, over100msLate: late.filter((x) => x > 100).length, p99LateMs: round(percentile(late, 99)), maxLateMs: round(Math.max(...late)) },
    heldOutLoss: { before: round(r.heldOutLossBefore, 4), after: round(r.heldOutLossAfter, 4) },
  };
}

/** Records one real fine-tune's frames (a mid-size tiny model, standard mode with the head update, the embedded server's defaults). */
async function record(steps: number): Promise<Recording> {
  const model = path.join(BENCH_CACHE, 'load', 'tiny-6x256-q8_0.gguf');
  if (!fs.existsSync(model)) writeTinyModel({ out: model, layers: 6, embd: 256, heads: 4, kvHeads: 2, type: 'q8_0', seed: 21 });
  const frames: Frame[] = [];
  await new FineTuneJob({
    workspace: workspace(), model, storeDir: fs.mkdtempSync(path.join(BENCH_CACHE, 'load-record-')), steps, log: () => undefined,
    onFrameSent: (f) => frames.push(decodeDeviceFrame(Buffer.from(f))),
  }).run();
  const hello = frames.find((f) => f.message.type === 'session/hello')!.message as DeviceMessage<'session/hello'>;
  const create = frames.find((f) => f.message.type === 'job/create')!.message as DeviceMessage<'job/create'>;
  const batches = frames.filter((f) => f.message.type === 'batch/train');
  return { model: hello.model, head: frames.filter((f) => f.message.type === 'head/begin' || f.message.type === 'head/chunk'), config: create.config, batches: batches.slice(0, steps) };
}

/** One simulated device: a job of the recording's config, every batch sent under credits; tokens and seconds from first batch to last acknowledgement. */
async function device(url: string, token: string, rec: Recording): Promise<{ tokens: number; start: number; end: number }> {
  const conn = await ServerConnection.open(url, token, rec.model, { client: 'load-device' });
  try {
    const { message: ready } = await conn.request({ type: 'job/create', name: 'load', config: rec.config });
    let tokens = 0;
    let end = 0;
    const window = new CreditWindow(conn, ready.jobId, conn.welcome.credits, (ack) => {
      tokens += ack.tokens;
      end = performance.now();
    });
    const start = performance.now();
    try {
      for (const b of rec.batches) {
        await window.acquire();
        const m = b.message as DeviceMessage<'batch/train'>;
        conn.send({ ...m, jobId: ready.jobId }, b.payload);
        window.sent(m.index);
      }
      await window.drain();
    } finally {
      window.dispose();
    }
    await conn.request({ type: 'job/cancel', jobId: ready.jobId });
    return { tokens, start, end };
  } finally {
    conn.close();
  }
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

/** A metric's value in a scrape (a bucket when `le` is given). */
function metric(text: string, name: string, le?: string): number {
  const re = le === undefined ? new RegExp(`^${name} (\\S+)$`, 'm') : new RegExp(`^${name}_bucket\\{le="${le.replace('+', '\\+')}"\\} (\\S+)$`, 'm');
  return Number(re.exec(text)?.[1] ?? NaN);
}

const LOOP_BUCKETS = ['0.001', '0.002', '0.005', '0.01', '0.02', '0.05', '0.1', '0.2', '0.5', '1', '2', '5', '+Inf'];

/** The server's main-thread delay between two scrapes: p99 as the bucket bound it falls under, and the largest. */
function loopDelay(before: string, after: string): { p99: number; max: number; ticks: number } {
  const counts = LOOP_BUCKETS.map((le) => metric(after, 'mobillm_event_loop_delay_seconds', le) - metric(before, 'mobillm_event_loop_delay_seconds', le));
  const total = counts[counts.length - 1]!;
  const at = counts.findIndex((c) => c >= 0.99 * total);
  const bound = LOOP_BUCKETS[at]!;
  const max = round(metric(after, 'mobillm_event_loop_delay_max_seconds') * 1000);
  // The bucket's bound is an upper bound of p99; the largest delay is a tighter one when it is below it.
  return { p99: bound === '+Inf' ? max : Math.min(Number(bound) * 1000, max), max, ticks: total };
}

async function startProbe(url: string, token: string, model: ModelSpec): Promise<() => Promise<ProbeTimes>> {
  const child = fork(PROBE, [JSON.stringify({ url, token, model })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise<void>((resolve) => child.once('message', () => resolve()));
  return () =>
    new Promise((resolve) => {
      child.on('message', (m: { type: string; times?: ProbeTimes }) => m.type === 'times' && resolve(m.times!));
      child.send({ type: 'stop' });
    });
}

/** One round: a fresh server on `store`, `n` devices at once, the probe beside them. */
async function loadRound(n: number, store: 'file' | 'postgres', rec: Recording, pg: TestPostgres | undefined, workers: number): Promise<Record<string, unknown>> {
  const dir = fs.mkdtempSync(path.join(BENCH_CACHE, 'load-server-'));
  const database = pg?.createDatabase(`load_${n}_${Date.now() % 100000}`);
  const where = database ?? dir;
  const port = await freePort();
  const server = await startServerProcess(dir, port, { args: ['--threads', '1', '--training-workers', String(workers), ...(database ? ['--database', database] : [])] });
  try {
    const tokens = Array.from({ length: n }, (_, i) => addUser(where, `dev${i}`));
    const probeToken = addUser(where, 'probe');
    // The head once, before the clock starts (each device then finds it cached).
    const setup = await ServerConnection.open(server.url, probeToken, rec.model);
    if (!setup.welcome.headCached) {
      for (const f of rec.head) await setup.sendFlushed(f.message, f.payload);
      await setup.request({ type: 'head/end' });
    }
    setup.close();
    const stopProbe = await startProbe(server.url, probeToken, rec.model);
    const before = await scrape(port);
    const jobs = await Promise.all(tokens.map((t) => device(server.url, t, rec)));
    const after = await scrape(port);
    const times = await stopProbe();
    const perJob = jobs.map((j) => j.tokens / ((j.end - j.start) / 1000));
    const wall = (Math.max(...jobs.map((j) => j.end)) - Math.min(...jobs.map((j) => j.start))) / 1000;
    const total = jobs.reduce((s, j) => s + j.tokens, 0);
    const result = {
      n, store,
      aggregateTokensPerSecond: Math.round(total / wall),
      perJobTokensPerSecond: { min: Math.round(Math.min(...perJob)), max: Math.round(Math.max(...perJob)), minOverMax: round(Math.min(...perJob) / Math.max(...perJob), 3) },
      healthzMs: { p50: round(percentile(times.healthzMs, 50)), p99: round(percentile(times.healthzMs, 99)), max: round(Math.max(...times.healthzMs)), requests: times.healthzMs.length },
      signInMs: { p99: round(percentile(times.signInMs, 99)), max: round(Math.max(...times.signInMs)), signIns: times.signInMs.length },
      probeFailures: times.failures,
      mainLoopDelayMs: loopDelay(before, after),
      leaseLosses: metric(after, 'mobillm_lease_losses_total'),
      seconds: round(wall),
    };
    log(`${store} x${n}: ${JSON.stringify(result)}`);
    return result;
  } finally {
    await killHard(server.proc);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--part <part>', 'extension-host, server or all', 'all')
    .option('--devices <list>', 'simulated devices per round', '1,2,4,8')
    .option('--stores <list>', 'file, postgres', 'file,postgres')
    .option('--steps <n>', 'training steps of each job', '30')
    .option('--training-workers <n>', 'the server\'s training workers (one intra-op thread each)', '2')
    .option('--context-rate <x>', 'extension host: the job\'s --context-rate (above 0: written as extensionHostTrainingContext)', '0')
    .option('--label-private', 'extension host: with a team server process, label-private (written as extensionHostLabelPrivate)')
    .parse()
    .opts<{ part: string; devices: string; stores: string; steps: string; trainingWorkers: string; contextRate: string; labelPrivate?: boolean }>();
  const steps = Number(o.steps);
  const file = path.join(ROOT, 'bench', 'results', 'load.json');
  const previous = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>) : {};
  const out: Record<string, unknown> = { ...previous, machine: machineDescription() };
  if (o.part === 'all' || o.part === 'extension-host') {
    log('extension host: an embedded fine-tune of the Qwen2.5-0.5B shape ...');
    const key = o.labelPrivate ? 'extensionHostLabelPrivate' : Number(o.contextRate) > 0 ? 'extensionHostTrainingContext' : 'extensionHost';
    out[key] = await extensionHost(steps, Number(o.contextRate), o.labelPrivate === true);
    log(JSON.stringify(out[key]));
  }
  if (o.part === 'all' || o.part === 'server') {
    log('recording the frames of one real fine-tune ...');
    const rec = await record(steps);
    const workers = Number(o.trainingWorkers);
    const devices: Record<string, unknown>[] = [];
    let pg: TestPostgres | undefined;
    for (const store of o.stores.split(',') as ('file' | 'postgres')[]) {
      if (store === 'postgres') {
        const started = await startPostgres();
        if ('skip' in started) {
          log(`PostgreSQL rounds skipped: ${started.skip}`);
          continue;
        }
        pg = started;
      }
      try {
        for (const n of o.devices.split(',').map(Number)) devices.push(await loadRound(n, store, rec, pg, workers));
      } finally {
        pg?.remove();
        pg = undefined;
      }
    }
    const one = (store: string): number | undefined => (devices.find((d) => d.store === store && d.n === 1)?.aggregateTokensPerSecond as number | undefined);
    out.server = { steps, trainingWorkers: workers, threadsPerWorker: 1, recording: { hiddenSize: rec.model.hiddenSize, layers: rec.model.layers, vocabulary: rec.model.vocabularySize, config: rec.config } };
    out.devices = devices.map((d) => ({ ...d, aggregateOverOneDevice: one(d.store as string) ? round((d.aggregateTokensPerSecond as number) / one(d.store as string)!, 3) : undefined }));
  }
  writeResult('load.json', out);
  log('wrote bench/results/load.json');
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
