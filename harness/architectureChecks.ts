import * as fs from 'node:fs';
import { Backbone } from '../extension/core/model/Backbone';
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../extension/core/job/FineTuneJob';
import { evaluateWorkspace } from '../extension/core/workspace/evaluateWorkspace';

/**
 * Checks of one model against llama.cpp's own graph, for every architecture
 * the device accepts (test/integration/architectures.test.ts holds them to
 * bounds; bench/architectures.ts records them).
 */

/** A short code text whose last position the head checks read. */
const PROBE_TEXT = 'export function total(items: number[]): number {\n  let sum = 0;\n  for (const x of items) sum += x;\n  return sum;\n}\n';
/** Next-token ids the head's loss is taken for (within any vocabulary of a generated model). */
const PROBE_TARGETS = [0, 3, 17, 42, 120, 250];

export interface HeadAgreement {
  /**
   * Largest |logit from the capture - llama.cpp's logit| over the largest
   * |logit|: the capture's last layer through the model's final norm and head
   * computed here in float64, soft-capped where the model caps (llama.cpp rounds the head's input to 8 bits for
   * a quantized head, which is most of the difference).
   */
  captureLogitsRelDiff: number;
  /** Largest relative difference of the device head's loss from the loss of llama.cpp's logits, on the sparse path (default tuning) and with every token dense. */
  headLossRelDiff: { sparse: number; dense: number };
  /** For a model that caps or scales its logits: the sparse path's difference when the head ignores that (what the description is for). */
  withoutDescription?: number;
}

/** The device's view of the last position (capture and DeviceHead) against llama.cpp's logits there. */
export async function headAgainstLlamaCpp(modelPath: string, threads = 1): Promise<HeadAgreement> {
  const bb = await Backbone.open(modelPath, { threads, contextSize: 256, maxSequences: 1 });
  try {
    const tokens = bb.tokenize(PROBE_TEXT);
    const n = tokens.length;
    const d = bb.info.hiddenSize;
    const logits = await bb.logitsAfter(tokens, 0);
    const capture = await bb.capture([tokens], [bb.info.layers - 1]);
    const y = capture.data[0]!.slice((n - 1) * d, n * d);
    // The reference: the description's norm and head in float64 over the dequantized matrix.
    const head = bb.info.head;
    const normWeight = (await bb.readTensor('output_norm.weight')).data;
    const layer = head.norm === 'layer';
    const normBias = layer ? (await bb.readTensor('output_norm.bias')).data : new Float32Array(d);
    const mean = layer ? y.reduce((a, v) => a + v, 0) / d : 0;
    let ss = 0;
    for (const v of y) ss += (v - mean) * (v - mean);
    const inv = 1 / Math.sqrt(ss / d + head.epsilon);
    const z = Float64Array.from(y, (v, i) => ((v - mean) * inv * normWeight[i]! + normBias[i]!) * head.logitMultiplier);
    const w = (await bb.readTensor(head.tensor)).data;
    let maxDiff = 0;
    let largest = 0;
    for (let v = 0; v < logits.length; v++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += z[i]! * w[v * d + i]!;
      if (head.softCap > 0) dot = head.softCap * Math.tanh(dot / head.softCap);
      maxDiff = Math.max(maxDiff, Math.abs(dot - logits[v]!));
      largest = Math.max(largest, Math.abs(logits[v]!));
    }
    let m = -Infinity;
    for (const v of logits) m = Math.max(m, v);
    let s = 0;
    for (const v of logits) s += Math.exp(v - m);
    const reference = PROBE_TARGETS.map((t) => m + Math.log(s) - logits[t]!);
    const relDiff = async (tuning?: { maxCandidates: number }, described = head): Promise<number> => {
      const dh = await DeviceHead.open(modelPath, described, threads, tuning);
      try {
        const ys = new Float32Array(PROBE_TARGETS.length * d);
        PROBE_TARGETS.forEach((_, j) => ys.set(y, j * d));
        const got = await dh.losses(ys, Int32Array.from(PROBE_TARGETS));
        return Math.max(...reference.map((r, j) => Math.abs(got[j]! - r) / Math.abs(r)));
      } finally {
        dh.dispose();
      }
    };
    const agreement: HeadAgreement = { captureLogitsRelDiff: maxDiff / largest, headLossRelDiff: { sparse: await relDiff(), dense: await relDiff({ maxCandidates: 0 }) } };
    // What the description changes: the same head without the soft cap or the logit multiplier.
    if (head.softCap > 0 || head.logitMultiplier !== 1) agreement.withoutDescription = await relDiff(undefined, { ...head, softCap: 0, logitMultiplier: 1 });
    return agreement;
  } finally {
    bb.dispose();
  }
}

export interface ModeRun {
  result: FineTuneResult;
  /** Each acknowledged step's training loss. */
  losses: number[];
  /** Held-out loss of the job's split with its adapter on the device (llama.cpp's forward with the side network joined), against the job's report: |device - reported|. */
  adapterParityNats: number;
}

/** A job on `workspace` (embedded server) and the device's held-out loss with its adapter. */
export async function runMode(options: FineTuneOptions): Promise<ModeRun> {
  const losses: number[] = [];
  const result = await new FineTuneJob({ ...options, onProgress: (p) => (losses.length = 0, losses.push(...p.lossHistory.map(([, l]) => l))) }).run();
  const seqLen = options.seqLen ?? 128;
  const bb = await Backbone.open(options.model!, { contextSize: 4 * (seqLen + 1), maxSequences: 4, threads: options.threads ?? 1 });
  try {
    await bb.useAdapter(fs.readFileSync(result.adapter));
    const tuned = await evaluateWorkspace(bb, options.workspace!, { seqLen, seed: options.seed });
    return { result, losses, adapterParityNats: Math.abs(tuned.heldOutLoss - result.heldOutLossAfter) };
  } finally {
    bb.dispose();
  }
}

/** Largest relative difference between two runs' step losses and held-out losses (the server's loss in the standard mode against the device's in label-private). */
export function runsRelDiff(a: ModeRun, b: ModeRun): number {
  const pairs: [number, number][] = a.losses.map((x, i) => [x, b.losses[i] ?? Number.NaN]);
  pairs.push([a.result.heldOutLossAfter, b.result.heldOutLossAfter]);
  if (a.losses.length !== b.losses.length) return Number.POSITIVE_INFINITY;
  return Math.max(...pairs.map(([x, y]) => Math.abs(x - y) / Math.abs(x)));
}
