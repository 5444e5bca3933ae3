/**
 * Held-out loss curves against wall time, for the peer (llama-finetune, one
 * epoch at a time) and for our variants (the device CLI), and the comparison
 * of a curve with the peer's: the side-network and quality benchmarks share
 * them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { firstTimeAtOrBelow, heldOutLoss, measure, runOurs, SEQ } from './peerHarness';

export interface Point {
  epochs: number;
  seconds: number;
  heldOutLoss: number;
}

export const best = (pts: Point[]): number => Math.min(...pts.map((p) => p.heldOutLoss));

export interface PeerRun {
  curve: Point[];
  /** The model after the peer's best epoch (kept for line completions). */
  bestModel: string;
}

export interface PeerSettings {
  bin: string;
  pretrained: string;
  trainText: string;
  workspace: string;
  /** Where the epochs' models are written (named `${prefix}-lr…-e….gguf`). */
  prefix: string;
  threads: number;
  /** Pin to this core (the other one is left to a server); all cores when absent. */
  cpu?: number;
}

/**
 * llama-finetune at learning rate `lr` for `epochs` epochs, one at a time, the
 * held-out loss after each; continues `from` an earlier run when given (its
 * last epoch's model must still exist). Keeps the best epoch's model.
 */
export async function peerRun(s: PeerSettings, lr: number, epochs: number, loss0: number, log: (line: string) => void, from?: PeerRun & { last: string }): Promise<PeerRun & { last: string }> {
  const curve: Point[] = from ? [...from.curve] : [{ epochs: 0, seconds: 0, heldOutLoss: loss0 }];
  let prev = from?.last ?? s.pretrained;
  let bestModel = from?.bestModel ?? s.pretrained;
  let t = curve[curve.length - 1]!.seconds;
  const drop = (file: string): void => {
    if (file !== s.pretrained && file !== bestModel && file !== prev) fs.rmSync(file, { force: true });
  };
  for (let epoch = curve.length; epoch <= epochs; epoch++) {
    const out = `${s.prefix}-lr${lr}-e${epoch}.gguf`;
    const m = await measure(path.join(s.bin, 'llama-finetune'), ['-m', prev, '-f', s.trainText, '-c', String(SEQ), '-b', String(SEQ), '-ub', String(SEQ), '--epochs', '1', '-lr', String(lr), '-t', String(s.threads), '-o', out], { cpu: s.cpu });
    t += m.wallSeconds;
    const loss = await heldOutLoss(out, s.workspace, s.threads);
    const wasBest = loss < best(curve);
    curve.push({ epochs: epoch, seconds: t, heldOutLoss: loss });
    const previousBest = bestModel;
    const previous = prev;
    if (wasBest) bestModel = out;
    prev = out;
    drop(previous);
    if (previousBest !== bestModel) drop(previousBest);
    log(`  peer lr ${lr} epoch ${epoch}: ${t.toFixed(1)} s, held-out ${loss.toFixed(4)}`);
  }
  return { curve, bestModel, last: prev };
}

/** Removes a peer run's models (its best one too unless `keepBest`). */
export function dropPeerRun(run: PeerRun & { last: string }, pretrained: string, keepBest: boolean): void {
  for (const f of new Set([run.last, run.bestModel])) if (f !== pretrained && !(keepBest && f === run.bestModel)) fs.rmSync(f, { force: true });
}

export interface Variant {
  name: string;
  args: string[];
  epochs: number[];
}

/** One variant from scratch at each of its epoch counts: its curve, and the adapter kept after `keepAt` epochs (for line completions). */
export async function runVariant(v: Variant, pretrained: string, workspace: string, loss0: number, keep: { epochs: number; file: (name: string) => string }, log: (line: string) => void, embedded = false): Promise<{ pts: Point[]; adapter?: string }> {
  const pts: Point[] = [{ epochs: 0, seconds: 0, heldOutLoss: loss0 }];
  let adapter: string | undefined;
  for (const epochs of v.epochs) {
    const file = epochs === keep.epochs ? keep.file(v.name) : undefined;
    const r = await runOurs(pretrained, workspace, embedded, ['--epochs', String(epochs), ...v.args], file);
    adapter = file ?? adapter;
    pts.push({ epochs, seconds: r.wallSeconds, heldOutLoss: r.summary.heldOutLossAfter });
    log(`  ${v.name} ${epochs} epoch(s), ${r.summary.steps} steps: ${r.wallSeconds.toFixed(1)} s, held-out ${r.summary.heldOutLossAfter.toFixed(4)}`);
  }
  return { pts, adapter };
}

/** Our best against the peer's, and the time each takes to the higher of the two. */
export function versus(pts: Point[], peer: Point[]) {
  const target = Math.max(best(pts), best(peer));
  const time = { ours: firstTimeAtOrBelow(pts, target), peer: firstTimeAtOrBelow(peer, target) };
  return { bestHeldOutLoss: best(pts), gapToPeerBest: best(pts) - best(peer), targetLoss: target, timeToTarget: time, timeToTargetVsPeer: time.ours !== null && time.peer ? time.ours / time.peer : null };
}
