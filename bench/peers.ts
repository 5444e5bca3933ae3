/**
 * MobiLLM's device vs on-device fine-tuning with llama.cpp's own
 * llama-finetune (full fine-tuning with backpropagation through the backbone,
 * F32 only), on this machine, same model, same text, same sequence length,
 * one after the other in this one script:
 *  - device peak RSS: ours during a fine-tune job (backbone forward + capture +
 *    quantize + send; the server runs in another process pinned to the other
 *    core) vs llama-finetune, vs plain inference of the same model
 *    (llama-perplexity, the floor); ours also on the Q8_0 and Q4_0 versions;
 *  - device CPU-seconds per training token and wall time per epoch;
 *  - ours with the server embedded in the same process, for comparison.
 * Results: bench/results/peers.json and a table on stdout.
 *
 *   npm run bench:peers [-- --sizes tiny,large]
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Backbone } from '../extension/core/Backbone';
import { scanWorkspace } from '../extension/core/scanWorkspace';
import { writeTinyModel } from '../extension/core/tinyModel';
import { GgmlTypeName } from '../extension/core/gguf/ggmlTypes';
import { BENCH_CACHE, machineDescription } from './benchModels';

const ROOT = path.resolve(__dirname, '..', '..');
const PEERS = path.join(BENCH_CACHE, 'peers');
const SEQ = 128;
const BATCH = 4;
const CLK_TCK = 100;

interface Measured {
  wallSeconds: number;
  cpuSeconds: number;
  peakRssBytes: number;
  stdout: string;
  stderr: string;
}

/** Runs a command and samples its /proc entry until it exits: peak RSS (VmHWM) and CPU time. */
function measure(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; cpu?: number } = {}): Promise<Measured> {
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
        // exited between samples
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

function buildPeer(): string {
  try {
    return execFileSync('bash', [path.join(ROOT, 'bench', 'build-peer.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop()!;
  } catch {
    console.error('error[PEER_BUILD]: could not build llama.cpp\'s llama-finetune from the bundle in node-llama-cpp (see the messages above; it needs cmake, g++ and about 5 minutes on 2 cores).');
    process.exit(1);
  }
}

/** The training text: this repository's source (as the demo scans it), cut to `maxBytes`, as one file for the peer and as files for us. */
function corpus(maxBytes: number): { text: string; file: string; workspace: string } {
  const dir = path.join(PEERS, `corpus-${maxBytes}`);
  const file = path.join(dir, 'train.txt');
  const workspace = path.join(dir, 'workspace');
  if (!fs.existsSync(file)) {
    const scan = scanWorkspace(ROOT);
    let text = '';
    for (const f of scan.files) {
      if (text.length >= maxBytes) break;
      text += `${f.text}\n`;
    }
    text = text.slice(0, maxBytes);
    fs.mkdirSync(workspace, { recursive: true });
    fs.writeFileSync(file, text);
    // The same text as files of ~4 KB (one held out by our split), cut at line ends.
    let part = 0;
    let at = 0;
    while (at < text.length) {
      let end = Math.min(text.length, at + 4096);
      const nl = text.lastIndexOf('\n', end);
      if (nl > at && end < text.length) end = nl + 1;
      fs.writeFileSync(path.join(workspace, `part${String(part++).padStart(3, '0')}.ts`), text.slice(at, end));
      at = end;
    }
  }
  return { text: fs.readFileSync(file, 'utf8'), file, workspace };
}

const SIZES = {
  tiny: { layers: 4, embd: 256, heads: 4, kvHeads: 4, ff: 768, maxBytes: 200_000 },
  large: { layers: 6, embd: 1024, heads: 8, kvHeads: 8, ff: 2816, maxBytes: 16_000 },
};

function model(size: keyof typeof SIZES, type: GgmlTypeName): string {
  const s = SIZES[size];
  const file = path.join(PEERS, `${size}-${s.layers}x${s.embd}-${type}.gguf`);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(PEERS, { recursive: true });
    writeTinyModel({ out: file, layers: s.layers, embd: s.embd, heads: s.heads, kvHeads: s.kvHeads, ff: s.ff, type, seed: 5, contextLength: 2048 });
  }
  return file;
}

async function ours(modelPath: string, workspace: string, embedded: boolean): Promise<Measured & { tokens: number; json: Record<string, number> }> {
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-peers-'));
  const cli = path.join(ROOT, 'out', 'extension', 'cli', 'main.js');
  const args = [cli, 'finetune', '--workspace', workspace, '--model', modelPath, '--seq-len', String(SEQ), '--batch', String(BATCH), '--epochs', '1', '--store', store, '--json'];
  let server: ChildProcess | undefined;
  try {
    if (!embedded) {
      const data = path.join(store, 'server');
      const token = execFileSync(process.execPath, [path.join(ROOT, 'out', 'server', 'cli', 'main.js'), 'users', 'add', 'bench', '--data', data], { encoding: 'utf8' }).trim();
      server = spawn('taskset', ['-c', '1', process.execPath, path.join(ROOT, 'out', 'server', 'cli', 'main.js'), 'start', '--port', '0', '--data', data]);
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        server!.stdout!.on('data', (d) => {
          out += d;
          const line = out.split('\n').find((l) => l.startsWith('{"ready"'));
          if (line) resolve(JSON.parse(line).url);
        });
        server!.on('exit', (c) => reject(new Error(`server exited ${c}`)));
      });
      args.push('--server', url, '--token', token);
    }
    const m = await measure(process.execPath, args, { cpu: embedded ? undefined : 0, env: { ...process.env, MOBILLM_HOME: store } });
    const json = JSON.parse(m.stdout.trim().split('\n').pop()!);
    return { ...m, tokens: json.trainTokens, json };
  } finally {
    server?.kill('SIGKILL');
    fs.rmSync(store, { recursive: true, force: true });
  }
}

/** Written after each size, so a long run keeps what it measured. */
function writeResults(results: Record<string, unknown>): void {
  const out = { sequenceLength: SEQ, batchSequences: BATCH, threads: 1, results, machine: machineDescription() };
  fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'peers.json'), `${JSON.stringify(out, null, 2)}\n`);
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--sizes');
  const sizes = (i >= 0 ? process.argv[i + 1]! : 'tiny,large').split(',') as (keyof typeof SIZES)[];
  const bin = buildPeer();
  const results: Record<string, unknown> = {};
  const table: string[] = [];
  for (const size of sizes) {
    const c = corpus(SIZES[size].maxBytes);
    const f32 = model(size, 'f32');
    const bb = await Backbone.open(f32, { contextSize: 64, maxSequences: 1 });
    const corpusTokens = bb.tokenize(c.text).length;
    bb.dispose();
    process.stderr.write(`${size}: ${corpusTokens} tokens of text, model ${(fs.statSync(f32).size / 2 ** 20).toFixed(0)} MiB (F32)\n`);
    const threads = ['-t', '1'];
    const floor = await measure(path.join(bin, 'llama-perplexity'), ['-m', f32, '-f', c.file, '-c', String(SEQ), '-b', String(SEQ), ...threads], { cpu: 0 });
    process.stderr.write(`  plain inference (llama-perplexity): peak ${(floor.peakRssBytes / 2 ** 20).toFixed(0)} MiB\n`);
    const peerOut = path.join(PEERS, `${size}-finetuned.gguf`);
    const peer = await measure(path.join(bin, 'llama-finetune'), ['-m', f32, '-f', c.file, '-c', String(SEQ), '-b', String(SEQ), '-ub', String(SEQ), '--epochs', '1', '-o', peerOut, ...threads], { cpu: 0 });
    // llama-finetune trains windows of n_ctx tokens taken every n_ctx / 2 tokens, less its validation split (5%).
    const peerTokens = Math.max(1, Math.floor((corpusTokens - SEQ) / (SEQ / 2)) + 1) * SEQ * 0.95;
    process.stderr.write(`  llama-finetune: peak ${(peer.peakRssBytes / 2 ** 20).toFixed(0)} MiB, ${peer.wallSeconds.toFixed(1)} s/epoch\n`);
    const mine: Record<string, Awaited<ReturnType<typeof ours>>> = {};
    for (const type of ['f32', 'q8_0', 'q4_0'] as const) {
      mine[type] = await ours(model(size, type), c.workspace, false);
      process.stderr.write(`  ours ${type} (server on the other core): device peak ${(mine[type]!.peakRssBytes / 2 ** 20).toFixed(0)} MiB, ${mine[type]!.wallSeconds.toFixed(1)} s\n`);
    }
    const embedded = await ours(f32, c.workspace, true);
    const r = {
      corpusTokens,
      modelBytesF32: fs.statSync(f32).size,
      plainInferencePeakRssMiB: floor.peakRssBytes / 2 ** 20,
      peer: { peakRssMiB: peer.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: peer.wallSeconds, cpuSeconds: peer.cpuSeconds, trainTokens: peerTokens, cpuSecondsPerToken: peer.cpuSeconds / peerTokens },
      ours: Object.fromEntries(Object.entries(mine).map(([t, m]) => [t, { devicePeakRssMiB: m.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: m.wallSeconds, deviceCpuSeconds: m.cpuSeconds, trainTokens: m.tokens, cpuSecondsPerToken: m.cpuSeconds / m.tokens, heldOutLossBefore: m.json.heldOutLossBefore, heldOutLossAfter: m.json.heldOutLossAfter }])),
      oursEmbeddedF32: { peakRssMiB: embedded.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: embedded.wallSeconds, cpuSecondsPerToken: embedded.cpuSeconds / embedded.tokens },
      rssVsPeer: mine.f32!.peakRssBytes / peer.peakRssBytes,
      rssQ8VsPeerF32: mine.q8_0!.peakRssBytes / peer.peakRssBytes,
      rssQ4VsPeerF32: mine.q4_0!.peakRssBytes / peer.peakRssBytes,
      rssVsPlainInference: mine.f32!.peakRssBytes / floor.peakRssBytes,
      cpuSecondsPerTokenVsPeer: mine.f32!.cpuSeconds / mine.f32!.tokens / (peer.cpuSeconds / peerTokens),
      wallPerEpochVsPeer: mine.f32!.wallSeconds / peer.wallSeconds,
      timeToTargetVsPeer: null,
      timeToTargetNote: 'not measured yet: the convergence comparison (pretrained backbone, held-out loss against wall time for both) is not implemented',
    };
    results[size] = r;
    writeResults(results);
    table.push(`| ${size} (${SIZES[size].layers}x${SIZES[size].embd}, ${(r.modelBytesF32 / 2 ** 20).toFixed(0)} MiB F32) | ${r.peer.peakRssMiB.toFixed(0)} | ${r.plainInferencePeakRssMiB.toFixed(0)} | ${r.ours.f32!.devicePeakRssMiB.toFixed(0)} (${r.rssVsPeer.toFixed(2)}x peer, ${r.rssVsPlainInference.toFixed(2)}x floor) | ${r.ours.q8_0!.devicePeakRssMiB.toFixed(0)} / ${r.ours.q4_0!.devicePeakRssMiB.toFixed(0)} | ${(1000 * r.peer.cpuSecondsPerToken).toFixed(2)} | ${(1000 * r.ours.f32!.cpuSecondsPerToken).toFixed(2)} (${r.cpuSecondsPerTokenVsPeer.toFixed(2)}x) | ${r.peer.wallSecondsPerEpoch.toFixed(1)} / ${r.ours.f32!.wallSecondsPerEpoch.toFixed(1)} |`);
  }
  console.log('| size | peer peak RSS MiB | plain inference MiB | ours F32 device MiB | ours Q8_0 / Q4_0 MiB | peer CPU ms/token | ours CPU ms/token | wall s/epoch peer / ours |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const row of table) console.log(row);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
