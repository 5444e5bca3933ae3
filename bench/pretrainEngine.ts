/**
 * Which engine pretrains the stand-in (issue 37): llama.cpp's llama-finetune
 * (the on-device peer, full F32 fine-tuning) against the project's ONNX
 * Runtime step (bench/lib/pretrain/), both on 2 threads, from the stand-in's
 * initial weights, with 512-token windows, over the first SLICE_BYTES of its
 * pretraining corpus, in one script. llama-finetune's windows overlap by half
 * (each corpus token is trained on twice per epoch); ours do not, so both
 * positions per second and corpus tokens per second are reported.
 *
 *   npm run bench:pretrain-engine    (writes bench/results/pretrainEngine.json)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readGgufFile } from '../extension/core/model/gguf/GgufFile';
import { tokenizeText } from '../harness/spmVocabulary';
import { machineDescription } from './lib/benchModels';
import { buildPeer, measure } from './lib/peerHarness';
import { STAND_IN, STAND_IN_PRETRAIN, standInFiles, vocabSize } from './lib/standInModel';
import { Pretrainer } from './lib/pretrain/Pretrainer';
import { windowBatch } from './lib/pretrain/pretrainStandIn';
import { readWeights } from './lib/pretrain/standInWeights';
import { writeResult } from './lib/writeResult';

const SLICE_BYTES = 60_000;
const THREADS = 2;
/** Our steps timed (after one untimed step that builds the sessions' buffers). */
const STEPS = 6;

async function main(): Promise<void> {
  const files = await standInFiles((line) => void process.stderr.write(`${line}\n`));
  const text = fs.readFileSync(files.corpus.file, 'utf8').slice(0, SLICE_BYTES);
  const slice = path.join(os.tmpdir(), `pretrain-engine-${process.pid}.txt`);
  fs.writeFileSync(slice, text);
  const tokens = await tokenizeText(files.vocab, text);
  const vocab = vocabSize(files.vocab);
  const bos = Number(readGgufFile(files.vocab).kv.get('tokenizer.ggml.bos_token_id')!.value);
  const T = STAND_IN_PRETRAIN.window;
  const B = STAND_IN_PRETRAIN.batch;

  // Ours: the stand-in's own settings, windows taken in order (repeating when the slice runs out).
  const trainer = await Pretrainer.create({ layers: STAND_IN.layers, embd: STAND_IN.embd, heads: STAND_IN.heads, ff: STAND_IN.ff, vocab }, STAND_IN_PRETRAIN, THREADS, readWeights(files.base));
  const windows = Math.floor(tokens.length / T);
  const batchAt = (s: number): ReturnType<typeof windowBatch> => windowBatch(tokens, Array.from({ length: B }, (_, i) => (s * B + i) % windows), T, bos);
  await trainer.trainStep(batchAt(0).ids, batchAt(0).targets, 1e-4);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let s = 1; s <= STEPS; s++) await trainer.trainStep(batchAt(s).ids, batchAt(s).targets, 1e-4);
  const oursSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  await trainer.dispose();
  const oursPositions = STEPS * B * T;
  const ours = {
    positionsPerSecond: oursPositions / oursSeconds, corpusTokensPerSecond: oursPositions / oursSeconds,
    seconds: oursSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6, peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  console.log(`ours: ${ours.positionsPerSecond.toFixed(0)} positions/s (${STEPS} steps of ${B} x ${T})`);

  // The peer: one epoch over the slice.
  const out = path.join(os.tmpdir(), `pretrain-engine-${process.pid}.gguf`);
  const m = await measure(path.join(buildPeer(), 'llama-finetune'), ['-m', files.base, '-f', slice, '-c', String(T), '-b', String(T), '-ub', String(T), '--epochs', '1', '-lr', '1e-4', '-t', String(THREADS), '-o', out]);
  fs.rmSync(out, { force: true });
  fs.rmSync(slice, { force: true });
  const done = [...m.stderr.matchAll(/train: [^\n\r]*?data=(\d+)\/(\d+)/g)].pop();
  if (done === undefined) throw new Error('llama-finetune printed no progress: was the slice too short for one window?');
  const peerPositions = Number(done[2]) * T;
  const peer = {
    positionsPerSecond: peerPositions / m.wallSeconds, corpusTokensPerSecond: peerPositions / 2 / m.wallSeconds,
    seconds: m.wallSeconds, cpuSeconds: m.cpuSeconds, peakRssBytes: m.peakRssBytes,
  };
  console.log(`llama-finetune: ${peer.positionsPerSecond.toFixed(0)} positions/s (${done[2]} windows of ${T}, overlapping by half)`);
  const result = {
    model: `stand-in ${STAND_IN.layers} x ${STAND_IN.embd}, ff ${STAND_IN.ff}, vocabulary ${vocab}, F32, initial weights`,
    slice: { bytes: SLICE_BYTES, tokens: tokens.length }, threads: THREADS, window: T,
    ours, peer,
    oursOverPeer: { positionsPerSecond: ours.positionsPerSecond / peer.positionsPerSecond, corpusTokensPerSecond: ours.corpusTokensPerSecond / peer.corpusTokensPerSecond },
    note: 'the peer includes its start-up and its validation pass (5% of windows) in its wall time; ours counts steps only (its sessions are built once per pretraining)',
    machine: machineDescription(),
  };
  writeResult('pretrainEngine.json', result);
  console.log(`ours / llama-finetune: ${result.oursOverPeer.positionsPerSecond.toFixed(2)}x positions per second, ${result.oursOverPeer.corpusTokensPerSecond.toFixed(2)}x corpus tokens per second`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
