/**
 * Side network v1 against v2 (causal self-attention), and the peer's full
 * fine-tuning, in one run on one pretrained backbone (default: the peer
 * benchmark's 4 x 256, pretrained by llama-finetune on @types/node, cached;
 * `-- --backbone standin`: the fair 6 x 384 stand-in of bench/standIn.ts).
 * Fine-tunes on this repository's first 32 KB of source, scores everything
 * with the same evaluator (the device's held-out loss, same held-out files).
 *
 *   ours: each variant from scratch for 1, 2, 4 and 8 epochs (device on core 0,
 *         server process on core 1); variants v1 (every layer), v2 (every
 *         layer), v2 starting from the backbone's weights, and at 1 and 4
 *         epochs v1 starting from the backbone's weights, v2 with every second
 *         layer tapped and v2 joining after the final norm (--only runs just the named variants against the last
 *         run's peer and merges them into its results)
 *   peer: llama-finetune, one epoch at a time, held-out loss after each
 *         (core 0): 8 epochs at the peer benchmark's best learning rate; on
 *         the stand-in 4 epochs at each of 3e-5, 1e-4 and 3e-4, the best compared
 *   lines: line completions (bench/lib/lineScore.ts) for the base model, v1, v2
 *         and v2 joining after the norm after 4 epochs, and the peer after its
 *         best epoch

 *   fit: where the gap comes from: in-process runs (8 epochs, learning rate
 *         1e-2) recording the mean training loss of the first and the last
 *         epoch (before each step) beside the held-out loss after
 *
 *   npm run bench:side-network [-- --backbone standin] [--skip-lines] [--skip-fit] [--fit-only] [--only NAME,...]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { heldOutFiles } from '../extension/core/workspace/dataset';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { scanWorkspace } from '../extension/core/workspace/scanWorkspace';
import { machineDescription } from './lib/benchModels';
import { positions, score } from './lib/lineScore';
import { pretrainedBackbone } from './lib/peerConvergence';
import { best, dropPeerRun, PeerRun, peerRun, Point, runVariant, Variant, versus } from './lib/curves';
import { buildPeer, corpus, heldOutLoss, PEERS, ROOT, SEQ } from './lib/peerHarness';
import { standInBackbone, standInVocabulary } from './lib/standInModel';
import { writeResult } from './lib/writeResult';

const FINETUNE_BYTES = 32_000;
const EPOCHS = [1, 2, 4, 8];
const PEER_EPOCHS = 8;
/** On the stand-in: the peer's learning rates (the best one is compared) and its epochs (about 80 s each there). */
const STANDIN_PEER_RATES = [3e-5, 1e-4, 3e-4];
const STANDIN_PEER_EPOCHS = 4;
const LINE_EPOCHS = 4;

const VARIANTS: Variant[] = [
  { name: 'v1', args: ['--side-network', '1'], epochs: EPOCHS },
  { name: 'v2', args: ['--side-network', '2', '--random-init'], epochs: EPOCHS },
  { name: 'v2-every-second-layer', args: ['--side-network', '2', '--random-init', '--tap-every', '2'], epochs: [1, 4] },
  { name: 'v2-join-after-norm', args: ['--side-network', '2', '--random-init', '--join-after-norm'], epochs: [1, 4] },
  { name: 'v2-from-backbone', args: ['--side-network', '2', '--init-from-backbone'], epochs: EPOCHS },
  { name: 'v1-from-backbone', args: ['--side-network', '1', '--init-from-backbone'], epochs: [1, 4] },
];

/** Line completions use the adapters after this many epochs. */
const KEEP = { epochs: LINE_EPOCHS, file: (name: string): string => path.join(PEERS, `choices-${name}-e${LINE_EPOCHS}.mobi`) };

/** Training fit against held-out loss: is the gap to full fine-tuning capacity (training loss stays high) or generalisation (it falls, held-out does not)? */
async function fit(model: string, workspace: string, log: (line: string) => void): Promise<Record<string, { firstEpochTrainLoss: number; lastEpochTrainLoss: number; heldOutLossAfter: number }>> {
  const runs: [string, 1 | 2, number][] = [['v1', 1, 8], ['v2', 2, 8], ['v1-reduction-2', 1, 2]];
  const out: Record<string, { firstEpochTrainLoss: number; lastEpochTrainLoss: number; heldOutLossAfter: number }> = {};
  for (const [name, sideNetwork, reduction] of runs) {
    let history: [number, number][] = [];
    const store = fs.mkdtempSync(path.join(PEERS, 'fit-'));
    try {
      const r = await new FineTuneJob({ workspace, model, storeDir: store, seqLen: SEQ, batchSize: 4, epochs: 8, learningRate: 1e-2, sideNetwork, initFromBackbone: false, reduction, threads: 1, onProgress: (p) => (history = p.lossHistory) }).run();
      const perEpoch = r.steps / 8;
      const mean = (xs: [number, number][]): number => xs.reduce((a, x) => a + x[1], 0) / xs.length;
      out[name] = { firstEpochTrainLoss: mean(history.slice(0, perEpoch)), lastEpochTrainLoss: mean(history.slice(-perEpoch)), heldOutLossAfter: r.heldOutLossAfter };
      log(`  fit ${name}: training loss first epoch ${out[name]!.firstEpochTrainLoss.toFixed(3)}, last ${out[name]!.lastEpochTrainLoss.toFixed(3)}; held-out after ${r.heldOutLossAfter.toFixed(4)}`);
    } finally {
      fs.rmSync(store, { recursive: true, force: true });
    }
  }
  return out;
}

/** Runs only the named variants against the peer of the last full run, and merges them (and their line completions, unless --skip-lines) into its results. */
async function onlyVariants(only: string[], pretrained: string, workspace: string, standin: boolean, log: (line: string) => void): Promise<void> {
  type Previous = { heldOutLossBefore: number; peer: { curve: Point[] }; ours: Record<string, Point[]>; versusPeer: Record<string, unknown>; lines: string | { results: Record<string, unknown> } };
  const previous = JSON.parse(fs.readFileSync(resultsFile(standin), 'utf8')) as Previous;
  for (const v of VARIANTS.filter((x) => only.includes(x.name))) {
    const { pts, adapter } = await runVariant(v, pretrained, workspace, previous.heldOutLossBefore, KEEP, log);
    previous.ours[v.name] = pts;
    previous.versusPeer[v.name] = versus(pts, previous.peer.curve);
    if (adapter && typeof previous.lines === 'object' && !process.argv.includes('--skip-lines')) {
      const s = await score(pretrained, adapter, positions(workspace));
      previous.lines.results[v.name] = s;
      log(`  ${v.name}: exact match ${(100 * s.exactMatch).toFixed(1)}%, edit similarity ${s.editSimilarity.toFixed(3)}`);
    }
  }
  writeResult(path.basename(resultsFile(standin)), previous);
}

function resultsFile(standin: boolean): string {
  return path.join(ROOT, 'bench', 'results', `sideNetwork${standin ? '-standin' : ''}.json`);
}

async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const bin = buildPeer();
  const standin = process.argv.includes('standin');
  const { pretrained } = standin ? await standInBackbone(log) : await pretrainedBackbone(bin, log);
  const ws = corpus(FINETUNE_BYTES);
  if (process.argv.includes('--fit-only')) {
    const previous = JSON.parse(fs.readFileSync(resultsFile(standin), 'utf8')) as Record<string, unknown>;
    writeResult(path.basename(resultsFile(standin)), { ...previous, fit: await fit(pretrained, ws.workspace, log) });
    return;
  }
  if (process.argv.includes('--only')) {
    await onlyVariants(process.argv[process.argv.indexOf('--only') + 1]!.split(','), pretrained, ws.workspace, standin, log);
    return;
  }
  const loss0 = await heldOutLoss(pretrained, ws.workspace);
  log(`backbone ${path.basename(pretrained)}: held-out loss before fine-tuning ${loss0.toFixed(4)}`);

  // The peer's learning rate: the convergence benchmark's best on the quick
  // backbone; on the stand-in (a different model) a small sweep of its own.
  const peersJson = JSON.parse(fs.readFileSync(path.join(ROOT, 'bench', 'results', 'peers.json'), 'utf8')) as { results: { convergence: { peerBestLearningRate: number } } };
  const peerRates = standin ? STANDIN_PEER_RATES : [peersJson.results.convergence.peerBestLearningRate];
  const peerEpochs = standin ? STANDIN_PEER_EPOCHS : PEER_EPOCHS;
  const files = scanWorkspace(ws.workspace).files;
  const held = new Set(heldOutFiles(files).map((f) => f.path));
  const trainText = path.join(PEERS, 'choices-train.txt');
  fs.writeFileSync(trainText, files.filter((f) => !held.has(f.path)).map((f) => f.text).join(''));
  const peerRuns: Record<string, PeerRun & { last: string }> = {};
  const settings = { bin, pretrained, trainText, workspace: ws.workspace, prefix: path.join(PEERS, 'choices-peer'), threads: 1, cpu: 0 };
  for (const rate of peerRates) {
    peerRuns[String(rate)] = await peerRun(settings, rate, peerEpochs, loss0, log);
  }
  const bestRate = peerRates.reduce((a, b) => (best(peerRuns[String(b)]!.curve) < best(peerRuns[String(a)]!.curve) ? b : a));
  for (const rate of peerRates) dropPeerRun(peerRuns[String(rate)]!, pretrained, rate === bestRate);
  const lr = bestRate;
  const peer = peerRuns[String(lr)]!.curve;
  const peerBestModel = peerRuns[String(lr)]!.bestModel;

  const ours: Record<string, Point[]> = {};
  const adapters: Record<string, string> = {};
  for (const v of VARIANTS) {
    const { pts, adapter } = await runVariant(v, pretrained, ws.workspace, loss0, KEEP, log);
    ours[v.name] = pts;
    if (adapter) adapters[v.name] = adapter;
  }

  const versusPeer = Object.fromEntries(Object.entries(ours).map(([name, pts]) => [name, versus(pts, peer)]));

  let lines: Record<string, { exactMatch: number; editSimilarity: number; seconds: number }> | undefined;
  let lineCount = 0;
  if (!process.argv.includes('--skip-lines')) {
    const cases = positions(ws.workspace);
    lineCount = cases.length;
    log(`line completions at ${cases.length} cursor positions ...`);
    lines = {
      base: await score(pretrained, undefined, cases),
      v1: await score(pretrained, adapters.v1, cases),
      v2: await score(pretrained, adapters.v2, cases),
      'v2-join-after-norm': await score(pretrained, adapters['v2-join-after-norm'], cases),
      peerFullFineTune: await score(peerBestModel, undefined, cases),
    };
    for (const [k, v] of Object.entries(lines)) log(`  ${k}: exact match ${(100 * v.exactMatch).toFixed(1)}%, edit similarity ${v.editSimilarity.toFixed(3)}`);
  }

  const out = {
    backbone: standin ? `the fair stand-in: 6 x 384 llama (F32), ${standInVocabulary()}` : '4 x 256 llama (F32), pretrained by llama-finetune on 96 KB of @types/node (the peer benchmark\'s quick variant)',
    heldOutLossBefore: loss0,
    workspace: `this repository's first ${FINETUNE_BYTES / 1000} KB of source`,
    peer: { learningRate: lr, curve: peer, best: best(peer), ...(peerRates.length > 1 ? { sweep: Object.fromEntries(Object.entries(peerRuns).map(([r, run]) => [r, run.curve])) } : {}) },
    ours,
    versusPeer,
    lines: lines ? { positions: lineCount, ourEpochs: LINE_EPOCHS, peerEpochs: peer.find((p) => p.heldOutLoss === best(peer))!.epochs, results: lines } : 'skipped (--skip-lines)',
    fit: process.argv.includes('--skip-fit') ? 'skipped (--skip-fit; run --fit-only)' : await fit(pretrained, ws.workspace, log),
    machine: machineDescription(),
  };
  writeResult(path.basename(resultsFile(standin)), out);
  for (const [name, v] of Object.entries(versusPeer)) {
    console.log(`${name}: best ${v.bestHeldOutLoss.toFixed(4)} (peer ${best(peer).toFixed(4)}, gap ${v.gapToPeerBest.toFixed(3)}), time to ${v.targetLoss.toFixed(3)}: ${v.timeToTargetVsPeer === null ? 'n/a' : `${v.timeToTargetVsPeer.toFixed(2)}x the peer`}`);
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
