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
 *  - ours with the server embedded in the same process, for comparison;
 *  - convergence: held-out loss against wall time for both, from a backbone
 *    the peer pretrained on another code corpus, and the time each takes to a
 *    common loss target (bench/lib/peerConvergence.ts), with a plot.
 * Results: bench/results/peers.json (merged: a part run alone keeps the
 * others' figures), bench/results/peers-convergence.{svg,png}, a table on stdout.
 *
 *   npm run bench:peers [-- --sizes tiny,large,convergence]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone } from '../extension/core/model/Backbone';
import { runConvergence } from './lib/peerConvergence';
import { benchModel, buildPeer, corpus, measure, runOurs, SEQ, PEERS, writeResults } from './lib/peerHarness';

const SIZES = {
  tiny: { layers: 4, embd: 256, heads: 4, kvHeads: 4, ff: 768, maxBytes: 200_000 },
  large: { layers: 6, embd: 1024, heads: 8, kvHeads: 8, ff: 2816, maxBytes: 16_000 },
};
type Part = keyof typeof SIZES | 'convergence';

async function main(): Promise<void> {
  const i = process.argv.indexOf('--sizes');
  const parts = (i >= 0 ? process.argv[i + 1]! : 'tiny,large,convergence').split(',') as Part[];
  const bin = buildPeer();
  const table: string[] = [];
  if (parts.includes('convergence')) {
    process.stderr.write('convergence (pretrained backbone, held-out loss against wall time):\n');
    const c = await runConvergence(bin, (line) => process.stderr.write(`${line}\n`));
    writeResults({ convergence: c });
    console.log(`convergence: target held-out loss ${c.targetLoss.toFixed(4)}; time to target ours ${c.timeToTarget.ours?.toFixed(1)} s, peer (lr ${c.peerBestLearningRate}) ${c.timeToTarget.peer?.toFixed(1)} s: ${c.timeToTargetVsPeer?.toFixed(2)}x`);
  }
  for (const size of parts.filter((p): p is keyof typeof SIZES => p !== 'convergence')) {
    const c = corpus(SIZES[size].maxBytes);
    const f32 = benchModel(size, SIZES[size], 'f32');
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
    const mine: Record<string, Awaited<ReturnType<typeof runOurs>>> = {};
    for (const type of ['f32', 'q8_0', 'q4_0'] as const) {
      mine[type] = await runOurs(benchModel(size, SIZES[size], type), c.workspace, false);
      process.stderr.write(`  ours ${type} (server on the other core): device peak ${(mine[type]!.peakRssBytes / 2 ** 20).toFixed(0)} MiB, ${mine[type]!.wallSeconds.toFixed(1)} s\n`);
    }
    const embedded = await runOurs(f32, c.workspace, true);
    // The Node.js runtime alone (an idle process): in VS Code the extension host already pays it.
    const node = await measure(process.execPath, ['-e', 'setTimeout(() => {}, 500)'], { cpu: 0 });
    const r = {
      corpusTokens,
      modelBytesF32: fs.statSync(f32).size,
      plainInferencePeakRssMiB: floor.peakRssBytes / 2 ** 20,
      peer: { peakRssMiB: peer.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: peer.wallSeconds, cpuSeconds: peer.cpuSeconds, trainTokens: peerTokens, cpuSecondsPerToken: peer.cpuSeconds / peerTokens },
      ours: Object.fromEntries(Object.entries(mine).map(([t, m]) => [t, { devicePeakRssMiB: m.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: m.wallSeconds, deviceCpuSeconds: m.cpuSeconds, trainTokens: m.summary.trainTokens, cpuSecondsPerToken: m.cpuSeconds / m.summary.trainTokens, heldOutLossBefore: m.summary.heldOutLossBefore, heldOutLossAfter: m.summary.heldOutLossAfter }])),
      oursEmbeddedF32: { peakRssMiB: embedded.peakRssBytes / 2 ** 20, wallSecondsPerEpoch: embedded.wallSeconds, cpuSecondsPerToken: embedded.cpuSeconds / embedded.summary.trainTokens },
      rssVsPeer: mine.f32!.peakRssBytes / peer.peakRssBytes,
      rssQ8VsPeerF32: mine.q8_0!.peakRssBytes / peer.peakRssBytes,
      rssQ4VsPeerF32: mine.q4_0!.peakRssBytes / peer.peakRssBytes,
      rssVsPlainInference: mine.f32!.peakRssBytes / floor.peakRssBytes,
      // Label-private by default: the device ran with a team server in another process and no privacy option.
      deviceMode: 'label-private (the default with a team server)',
      nodeRuntimeRssMiB: node.peakRssBytes / 2 ** 20,
      rssAboveNodeRuntimeVsPlainInference: (mine.f32!.peakRssBytes - node.peakRssBytes) / floor.peakRssBytes,
      cpuSecondsPerTokenVsPeer: mine.f32!.cpuSeconds / mine.f32!.summary.trainTokens / (peer.cpuSeconds / peerTokens),
      wallPerEpochVsPeer: mine.f32!.wallSeconds / peer.wallSeconds,
      timeToTargetNote: 'random weights: see results.convergence for time to a common held-out loss target from a pretrained backbone',
    };
    writeResults({ [size]: r });
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
