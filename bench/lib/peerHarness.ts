/**
 * What the peer benchmark's parts share: running and measuring a process
 * (peak RSS, CPU time), building llama.cpp's llama-finetune, the training text,
 * the benchmark models, our device CLI against a server pinned to the other
 * core, and the results file.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Backbone } from '../../extension/core/model/Backbone';
import { evaluateWorkspace, heldOutSequences } from '../../extension/core/workspace/evaluateWorkspace';
import { scanWorkspace } from '../../extension/core/workspace/scanWorkspace';
import { writeTinyModel } from '../../extension/core/model/tinyModel';
import { GgmlTypeName } from '../../extension/core/model/gguf/ggmlTypes';
import { addUser, DEVICE_CLI, startServerProcess } from '../../harness/serverProcess';
import { BENCH_CACHE, machineDescription } from './benchModels';
import { writeResult } from './writeResult';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const PEERS = path.join(BENCH_CACHE, 'peers');
/** Tokens per training window, for both methods. */
export const SEQ = 128;
/** Sequences per optimizer step (ours; the peer takes one window per step at -b SEQ). */
export const BATCH = 4;
/** Linux clock ticks per second, for /proc/PID/stat. */
const CLK_TCK = 100;
const RESULTS_FILE = path.join(ROOT, 'bench', 'results', 'peers.json');

export interface Measured {
  wallSeconds: number;
  cpuSeconds: number;
  peakRssBytes: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (optionally pinned to one core) and samples its /proc entry until it exits: peak RSS (VmHWM) and CPU time. */
export function measure(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; cpu?: number } = {}): Promise<Measured> {
  const [file, argv] = options.cpu !== undefined ? ['taskset', ['-c', String(options.cpu), cmd, ...args]] : [cmd, args];
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child: ChildProcess = spawn(file, argv, { env: options.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-20000)));
    let peak = 0;
    let cpu = 0;
    const sample = (): void => {
      try {
        const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
        const m = /VmHWM:\s+(\d+) kB/.exec(status);
        if (m) peak = Math.max(peak, Number(m[1]) * 1024);
        const stat = fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        cpu = (Number(stat[11]) + Number(stat[12])) / CLK_TCK;
      } catch {
        // the process exited between two samples: keep the last figures
      }
    };
    const timer = setInterval(sample, 50);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearInterval(timer);
      if (code !== 0) reject(new Error(`${path.basename(cmd)} exited with ${code}: ${stderr.slice(-2000)}`));
      else resolve({ wallSeconds: (Date.now() - t0) / 1000, cpuSeconds: cpu, peakRssBytes: peak, stdout, stderr });
    });
  });
}

/** Builds (once) llama.cpp's llama-finetune and llama-perplexity; returns their folder or exits with error[PEER_BUILD]. */
export function buildPeer(): string {
  try {
    return execFileSync('bash', [path.join(ROOT, 'bench', 'build-peer.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
  } catch {
    console.error('error[PEER_BUILD]: could not build llama.cpp\'s llama-finetune from the bundle in node-llama-cpp (see the messages above; it needs cmake, g++ and about 5 minutes on 2 cores).');
    process.exit(1);
  }
}

/** Writes `text` as files of about 4 KB cut at line ends (a workspace our scan and split see as many files). */
function writeAsFiles(text: string, dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  let part = 0;
  let at = 0;
  while (at < text.length) {
    let end = Math.min(text.length, at + 4096);
    const nl = text.lastIndexOf('\n', end);
    if (nl > at && end < text.length) end = nl + 1;
    fs.writeFileSync(path.join(dir, `part${String(part++).padStart(3, '0')}.ts`), text.slice(at, end));
    at = end;
  }
}

/** The training text: this repository's source (as the demo scans it), cut to `maxBytes`, as one file for the peer and as a workspace of files for us. */
export function corpus(maxBytes: number): { text: string; file: string; workspace: string } {
  const dir = path.join(PEERS, `corpus-${maxBytes}`);
  const file = path.join(dir, 'train.txt');
  const workspace = path.join(dir, 'workspace');
  if (!fs.existsSync(file)) {
    let text = '';
    for (const f of scanWorkspace(ROOT).files) {
      if (text.length >= maxBytes) break;
      text += `${f.text}\n`;
    }
    text = text.slice(0, maxBytes);
    writeAsFiles(text, workspace);
    fs.writeFileSync(file, text);
  }
  return { text: fs.readFileSync(file, 'utf8'), file, workspace };
}

export interface ModelSize {
  layers: number;
  embd: number;
  heads: number;
  kvHeads: number;
  ff: number;
}

/** A random-weight llama model of this shape and tensor type, generated once into the cache. */
export function benchModel(name: string, s: ModelSize, type: GgmlTypeName): string {
  const file = path.join(PEERS, `${name}-${s.layers}x${s.embd}-${type}.gguf`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(PEERS, { recursive: true });
    writeTinyModel({ out: file, layers: s.layers, embd: s.embd, heads: s.heads, kvHeads: s.kvHeads, ff: s.ff, type, seed: 5, contextLength: 2048 });
  }
  return file;
}

/** What `mobillm finetune --json` prints last. */
export interface FinetuneSummary {
  steps: number;
  trainTokens: number;
  heldOutLossBefore: number;
  heldOutLossAfter: number;
  seconds: number;
  /** The adapter file (inside the run's store, removed after the run). */
  adapter: string;
}

/**
 * Our device CLI fine-tuning `workspace` on `modelPath`: with the server in
 * the same process (`embedded`), or in its own process on core 1 with the
 * device on core 0, so the device's figures are its own.
 */
export async function runOurs(modelPath: string, workspace: string, embedded: boolean, extraArgs: string[] = ['--epochs', '1'], keepAdapterAs?: string): Promise<Measured & { summary: FinetuneSummary }> {
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-peers-'));
  const args = [DEVICE_CLI, 'finetune', '--workspace', workspace, '--model', modelPath, '--seq-len', String(SEQ), '--batch', String(BATCH), '--store', store, '--json', ...extraArgs];
  let server: ChildProcess | undefined;
  try {
    if (!embedded) {
      const data = path.join(store, 'server');
      const token = addUser(data, 'bench');
      const started = await startServerProcess(data, 0, { cpu: 1 });
      server = started.proc;
      args.push('--server', started.url, '--token', token);
    }
    const m = await measure(process.execPath, args, { cpu: embedded ? undefined : 0, env: { ...process.env, MOBILLM_HOME: store } });
    const summary = JSON.parse(m.stdout.trim().split('\n').pop()!) as FinetuneSummary;
    if (keepAdapterAs) fs.copyFileSync(summary.adapter, keepAdapterAs);
    return { ...m, summary };
  } finally {
    server?.kill('SIGKILL');
    fs.rmSync(store, { recursive: true, force: true });
  }
}

/** Merges `results` into bench/results/peers.json (parts of the benchmark can be run alone without losing the others). */
export function writeResults(results: Record<string, unknown>): void {
  let previous: Record<string, unknown> = {};
  try {
    previous = (JSON.parse(fs.readFileSync(RESULTS_FILE, 'utf8')) as { results?: Record<string, unknown> }).results ?? {};
  } catch {
    // no earlier results: start a new file
  }
  const out = { sequenceLength: SEQ, batchSequences: BATCH, threads: 1, results: { ...previous, ...results }, machine: machineDescription() };
  writeResult(path.basename(RESULTS_FILE), out);
}

/** The held-out loss of `model` on `workspace` by the device's evaluator (the one scorer of the convergence benchmarks). */
export async function heldOutLoss(model: string, workspace: string, threads = 1): Promise<number> {
  const bb = await Backbone.open(model, { contextSize: 4 * (SEQ + 1), maxSequences: 4, threads });
  try {
    return (await evaluateWorkspace(bb, workspace, { seqLen: SEQ })).heldOutLoss;
  } finally {
    bb.dispose();
  }
}

/** The held-out sequences heldOutLoss scores (`model` only tokenizes). */
export async function heldOutSequencesOf(model: string, workspace: string): Promise<Int32Array[]> {
  const bb = await Backbone.open(model, { threads: 1 });
  try {
    return await heldOutSequences(bb, workspace, { seqLen: SEQ });
  } finally {
    bb.dispose();
  }
}

/** The first measured time at which a curve is at or below `target` (no interpolation: an upper bound). */
export function firstTimeAtOrBelow(points: { seconds: number; heldOutLoss: number }[], target: number): number | null {
  return points.find((p) => p.heldOutLoss <= target + 1e-9)?.seconds ?? null;
}
