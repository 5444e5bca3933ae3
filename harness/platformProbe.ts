/**
 * What `npm run test:platforms` runs on each target (natively on linux-x64,
 * under qemu with Node for arm64 on linux-arm64): the product's own code with
 * that target's addon (out/native/<target>/), on the same inputs, writing what
 * the test compares across targets into OUT:
 *
 *   capture-<k>.f32   every layer's output for TEXT on model k, float32 LE
 *   report.json       the target, per model its capture's layers and tokens
 *                     and the adapter's loss, and the embedded server's few
 *                     training steps (or why they could not run); written
 *                     again before and after each phase, so a process that
 *                     dies (a native crash) leaves the phases it finished and
 *                     names the one it died in (`running`)
 *
 *   node out/harness/platformProbe.js OUT WORKSPACE ADAPTER_MODEL ADAPTER MODEL...
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone } from '../extension/core/model/Backbone';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { targetOf } from '../extension/native/targets';

/** The text every target captures and scores. */
export const PROBE_TEXT = 'export function total(items: number[]): number {\n  let sum = 0;\n  for (const x of items) sum += x; // ünïcode\n  return sum;\n}\n';
/** Training steps the embedded server takes on each target. */
export const PROBE_STEPS = 3;

/** The probe's phases, in the order it runs them. */
export const PROBE_PHASES = ['captures', 'adapterLoss', 'training'] as const;
export type ProbePhase = (typeof PROBE_PHASES)[number];

export interface ProbeReport {
  target: string | undefined;
  node: string;
  /** The phase running when the report was last written (absent once every phase finished). */
  running?: ProbePhase;
  models: { file: string; layers: number; tokens: number }[];
  adapterLoss: { lossSum: number; tokens: number };
  training: { steps: number; heldOutLossBefore: number; heldOutLossAfter: number } | { error: string };
}

async function main(): Promise<void> {
  const [out, workspace, adapterModel, adapter, ...models] = process.argv.slice(2);
  if (!out || !workspace || !adapterModel || !adapter || models.length === 0) throw new Error('usage: platformProbe OUT WORKSPACE ADAPTER_MODEL ADAPTER MODEL...');
  fs.mkdirSync(out, { recursive: true });
  const report: Partial<ProbeReport> = { target: targetOf(), node: process.version, models: [] };
  const write = (running: ProbePhase | undefined): void => {
    if (running === undefined) delete report.running;
    else report.running = running;
    fs.writeFileSync(path.join(out, 'report.json'), JSON.stringify(report, null, 2));
  };
  write('captures');
  for (const [k, file] of models.entries()) {
    const bb = await Backbone.open(file, { contextSize: 256, maxSequences: 1, threads: 2, flashAttention: false });
    try {
      const tokens = bb.tokenize(PROBE_TEXT);
      const cap = await bb.capture([tokens], 'all');
      const all = Buffer.concat(cap.data.map((l) => Buffer.from(l.buffer, l.byteOffset, l.byteLength)));
      fs.writeFileSync(path.join(out, `capture-${k}.f32`), all);
      report.models!.push({ file: path.basename(file), layers: cap.data.length, tokens: tokens.length });
    } finally {
      bb.dispose();
    }
  }
  write('adapterLoss');
  const bb = await Backbone.open(adapterModel, { contextSize: 256, maxSequences: 1, threads: 2, flashAttention: false });
  try {
    await bb.useAdapterFile(adapter);
    const { lossSum, tokens } = await bb.sequenceLoss([bb.tokenize(PROBE_TEXT)]);
    report.adapterLoss = { lossSum, tokens };
  } finally {
    bb.dispose();
  }
  write('training');
  try {
    const r = await new FineTuneJob({ workspace, model: adapterModel, storeDir: path.join(out, 'store'), steps: PROBE_STEPS, seqLen: 32, batchSize: 2, threads: 2, seed: 5 }).run();
    report.training = { steps: r.steps, heldOutLossBefore: r.heldOutLossBefore, heldOutLossAfter: r.heldOutLossAfter };
  } catch (err) {
    report.training = { error: err instanceof Error ? `${(err as { code?: string }).code ?? 'ERROR'}: ${err.message.slice(0, 300)}` : String(err) };
  }
  write(undefined);
}

if (require.main === module) {
  void main().catch((err) => {
    process.stderr.write(`platform probe failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
