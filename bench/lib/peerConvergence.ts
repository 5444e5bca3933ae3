/**
 * Convergence against on-device fine-tuning: held-out loss against wall time
 * for our side tuning and for llama.cpp's llama-finetune (full fine-tuning),
 * starting from the same backbone, which first learns something: the peer
 * pretrains it on a different code corpus (the TypeScript declarations of
 * @types/node, read from node_modules at run time) and the result is cached.
 *
 * Both then fine-tune on the same training files of the sample workspace
 * (this repository's source) and are scored by the same evaluator (our device's
 * held-out loss, same held-out files). Device and peer run on core 0; our
 * server, standing in for the team's GPU server, on core 1.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { heldOutFiles } from '../../extension/core/workspace/dataset';
import { scanWorkspace } from '../../extension/core/workspace/scanWorkspace';
import { PlotSeries, lossPlotSvg, svgToPng } from './lossPlot';
import { benchModel, corpus, firstTimeAtOrBelow, heldOutLoss, measure, ModelSize, PEERS, ROOT, runOurs, SEQ } from './peerHarness';

/** The backbone: wide enough to learn, shallow enough for llama-finetune at this release. */
const SIZE: ModelSize = { layers: 4, embd: 256, heads: 4, kvHeads: 4, ff: 768 };
/** Pretraining text (bytes), epochs and learning rate. */
const PRETRAIN_BYTES = 96_000;
const PRETRAIN_EPOCHS = 2;
const PRETRAIN_LR = 3e-4;
/** Fine-tuning text: the first bytes of this repository's source. */
const FINETUNE_BYTES = 32_000;
/** The peer's learning rates: its default (1e-5) and larger ones; the best is compared. */
const PEER_LRS = [1e-5, 1e-4, 3e-4];
const PEER_EPOCHS = 8;
/** Our runs, each from scratch: epochs of side tuning (default learning rate). */
const OUR_EPOCHS = [1, 2, 4, 8];

export interface CurvePoint {
  seconds: number;
  heldOutLoss: number;
}

export interface ConvergenceResult {
  model: ModelSize & { bytesF32: number };
  pretrain: { corpusBytes: number; epochs: number; learningRate: number; seconds: number | null; heldOutLossOnWorkspace: number; randomWeightsHeldOutLoss: number };
  finetuneCorpusBytes: number;
  peer: Record<string, CurvePoint[]>;
  peerBestLearningRate: number;
  ours: (CurvePoint & { epochs: number; steps: number; serverHeldOutLossBefore: number })[];
  targetLoss: number;
  timeToTarget: { ours: number | null; peer: number | null };
  timeToTargetVsPeer: number | null;
  /** The same comparison against each learning rate of the peer. */
  byPeerLearningRate: Record<string, { targetLoss: number; timeToTarget: { ours: number | null; peer: number | null }; timeToTargetVsPeer: number | null }>;
  plot: { svg: string; png: string | null; pngNote?: string };
}

/** TypeScript declarations from node_modules/@types/node: real code, not this repository's. */
function pretrainCorpus(): string {
  const file = path.join(PEERS, `pretrain-${PRETRAIN_BYTES}.txt`);
  if (!fs.existsSync(file)) {
    const dir = path.join(ROOT, 'node_modules', '@types', 'node');
    let text = '';
    for (const name of fs.readdirSync(dir).filter((n) => n.endsWith('.d.ts')).sort()) {
      if (text.length >= PRETRAIN_BYTES) break;
      text += `${fs.readFileSync(path.join(dir, name), 'utf8')}\n`;
    }
    fs.mkdirSync(PEERS, { recursive: true });
    fs.writeFileSync(file, text.slice(0, PRETRAIN_BYTES));
  }
  return file;
}

function peerArgs(model: string, text: string, out: string, epochs: number, lr: number, threads: number): string[] {
  return ['-m', model, '-f', text, '-c', String(SEQ), '-b', String(SEQ), '-ub', String(SEQ), '--epochs', String(epochs), '-lr', String(lr), '-t', String(threads), '-o', out];
}

/** The pretrained backbone (pretrained once with llama-finetune, then cached); seconds is null when the cached one was used. */
export async function pretrainedBackbone(bin: string, log: (line: string) => void): Promise<{ base: string; pretrained: string; seconds: number | null }> {
  const base = benchModel('converge', SIZE, 'f32');
  const pretrained = path.join(PEERS, `converge-pretrained-${PRETRAIN_BYTES}-${PRETRAIN_EPOCHS}.gguf`);
  if (fs.existsSync(pretrained)) return { base, pretrained, seconds: null };
  log(`pretraining ${path.basename(base)} with llama-finetune on ${PRETRAIN_BYTES / 1000} KB of @types/node (once, cached) ...`);
  const m = await measure(path.join(bin, 'llama-finetune'), peerArgs(base, pretrainCorpus(), `${pretrained}.tmp`, PRETRAIN_EPOCHS, PRETRAIN_LR, 2));
  fs.renameSync(`${pretrained}.tmp`, pretrained);
  return { base, pretrained, seconds: m.wallSeconds };
}

export async function runConvergence(bin: string, log: (line: string) => void): Promise<ConvergenceResult> {
  const { base, pretrained, seconds: pretrainSeconds } = await pretrainedBackbone(bin, log);
  const ws = corpus(FINETUNE_BYTES);
  const loss0 = await heldOutLoss(pretrained, ws.workspace);
  const lossRandom = await heldOutLoss(base, ws.workspace);
  log(`  pretrained backbone: held-out loss on the workspace ${loss0.toFixed(4)} (random weights: ${lossRandom.toFixed(4)})`);

  // The peer trains on exactly our training files (the held-out ones left out), concatenated.
  const files = scanWorkspace(ws.workspace).files;
  const held = new Set(heldOutFiles(files).map((f) => f.path));
  const trainText = path.join(PEERS, `converge-train-${FINETUNE_BYTES}.txt`);
  fs.writeFileSync(trainText, files.filter((f) => !held.has(f.path)).map((f) => f.text).join(''));

  const peer: Record<string, CurvePoint[]> = {};
  for (const lr of PEER_LRS) {
    const points: CurvePoint[] = [{ seconds: 0, heldOutLoss: loss0 }];
    let prev = pretrained;
    let t = 0;
    for (let epoch = 1; epoch <= PEER_EPOCHS; epoch++) {
      const out = path.join(PEERS, `converge-peer-lr${lr}-e${epoch}.gguf`);
      const m = await measure(path.join(bin, 'llama-finetune'), peerArgs(prev, trainText, out, 1, lr, 1), { cpu: 0 });
      if (prev !== pretrained) fs.rmSync(prev, { force: true });
      prev = out;
      t += m.wallSeconds;
      points.push({ seconds: t, heldOutLoss: await heldOutLoss(out, ws.workspace) });
      log(`  peer lr ${lr} epoch ${epoch}: ${t.toFixed(1)} s, held-out ${points.at(-1)!.heldOutLoss.toFixed(4)}`);
    }
    fs.rmSync(prev, { force: true });
    peer[String(lr)] = points;
  }

  const ours: ConvergenceResult['ours'] = [];
  for (const epochs of OUR_EPOCHS) {
    const r = await runOurs(pretrained, ws.workspace, false, ['--epochs', String(epochs)]);
    ours.push({ epochs, steps: r.summary.steps, seconds: r.wallSeconds, heldOutLoss: r.summary.heldOutLossAfter, serverHeldOutLossBefore: r.summary.heldOutLossBefore });
    log(`  ours ${epochs} epoch(s), ${r.summary.steps} steps: ${r.wallSeconds.toFixed(1)} s, held-out ${r.summary.heldOutLossAfter.toFixed(4)}`);
  }
  const ourCurve: CurvePoint[] = [{ seconds: 0, heldOutLoss: loss0 }, ...ours.map((o) => ({ seconds: o.seconds, heldOutLoss: o.heldOutLoss }))];

  const best = (pts: CurvePoint[]): number => Math.min(...pts.map((p) => p.heldOutLoss));
  // Against each of the peer's learning rates: the common target is the best loss both reach.
  const byPeerLearningRate = Object.fromEntries(PEER_LRS.map((lr) => {
    const target = Math.max(best(ourCurve), best(peer[String(lr)]!));
    const t = { ours: firstTimeAtOrBelow(ourCurve, target), peer: firstTimeAtOrBelow(peer[String(lr)]!, target) };
    return [String(lr), { targetLoss: target, timeToTarget: t, timeToTargetVsPeer: t.ours !== null && t.peer ? t.ours / t.peer : null }];
  }));
  // The headline compares with the peer at its best learning rate (the lowest loss it reaches).
  const peerBestLr = PEER_LRS.reduce((a, b) => (best(peer[String(b)]!) < best(peer[String(a)]!) ? b : a));
  const { targetLoss, timeToTarget } = byPeerLearningRate[String(peerBestLr)]!;

  const colors = ['#9aa6b2', '#6b7c8f', '#c0392b'];
  const series: PlotSeries[] = [
    { label: 'MobiLLM side tuning', points: ourCurve.map((p) => [p.seconds, p.heldOutLoss]), color: '#1f6feb' },
    ...PEER_LRS.map((lr, i) => ({ label: `llama-finetune lr ${lr}`, points: peer[String(lr)]!.map((p): [number, number] => [p.seconds, p.heldOutLoss]), color: colors[i % colors.length]!, dashed: true })),
  ];
  const svg = lossPlotSvg(series, {
    title: `Held-out loss vs wall time (${SIZE.layers}x${SIZE.embd} F32, pretrained)`,
    xLabel: 'wall seconds (device and peer on core 0; our server on core 1)',
    yLabel: 'held-out loss (nats/token)',
    hLine: { y: targetLoss, label: `target ${targetLoss.toFixed(3)}` },
  });
  const svgPath = path.join(ROOT, 'bench', 'results', 'peers-convergence.svg');
  const pngPath = path.join(ROOT, 'bench', 'results', 'peers-convergence.png');
  fs.mkdirSync(path.dirname(svgPath), { recursive: true });
  fs.writeFileSync(svgPath, svg);
  const pngNote = await svgToPng(svg, pngPath);
  if (pngNote) log(`  plot: ${pngNote}`);

  return {
    model: { ...SIZE, bytesF32: fs.statSync(pretrained).size },
    pretrain: { corpusBytes: PRETRAIN_BYTES, epochs: PRETRAIN_EPOCHS, learningRate: PRETRAIN_LR, seconds: pretrainSeconds, heldOutLossOnWorkspace: loss0, randomWeightsHeldOutLoss: lossRandom },
    finetuneCorpusBytes: FINETUNE_BYTES,
    peer,
    peerBestLearningRate: peerBestLr,
    ours,
    targetLoss,
    timeToTarget,
    timeToTargetVsPeer: byPeerLearningRate[String(peerBestLr)]!.timeToTargetVsPeer,
    byPeerLearningRate,
    plot: { svg: path.relative(ROOT, svgPath), png: pngNote ? null : path.relative(ROOT, pngPath), ...(pngNote ? { pngNote } : {}) },
  };
}
