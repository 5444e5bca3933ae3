/**
 * The privacy audit: what a server holding a job's frames can read back, on
 * the fair stand-in (bench/standIn.ts) and the quality benchmark's workspace
 * (bench/lib/qualityCorpus.ts: a package the stand-in never saw). For the
 * workspace's tokens, the share recovered exactly, per tapped layer, by
 *   (a) the target ids (the standard mode sends them; label-private does not),
 *   (b) the input embedding nearest to the layer's state,
 *   (c) the logit lens (the public final norm and head) against the next token,
 *   (d) a linear inverter fitted on public code (the stand-in's pretraining
 *       text, not the workspace), then the nearest embedding,
 * on the frames as the server decodes them at 8 and 4 bits (harness/privacyAttacks.ts).
 * For the frame set as a whole, the attacker picks the (attack, layer) that
 * recovers most on public calibration text it holds, and we report what that
 * choice recovers on the workspace (and, as an upper bound no attacker can
 * pick, the share any attack on any layer gets). Then the trade-off: that
 * share against held-out loss for the settings a user can choose.
 *
 *   npm run bench:privacy
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decodeLayersPayload, encodeLayersPayload } from '../common/batchPayload';
import type { Bits } from '../common/ActivationQuantizer';
import { Backbone, readModelTensor } from '../extension/core/model/Backbone';
import { DeviceHead } from '../extension/core/model/DeviceHead';
import { FineTuneJob, tappedLayers } from '../extension/core/job/FineTuneJob';
import { scanWorkspace } from '../extension/core/workspace/scanWorkspace';
import { applyLinearMap, fitLinearMap, nearestEmbeddingLookup, rowsOf, share, topIds } from '../harness/privacyAttacks';
import { machineDescription } from './lib/benchModels';
import { lossPlotSvg } from './lib/lossPlot';
import { PEERS, ROOT, SEQ } from './lib/peerHarness';
import { qualityWorkspace } from './lib/qualityCorpus';
import { pretrainText, standInBackbone, standInRecord, standInVocabulary, STAND_IN } from './lib/standInModel';
import { writeResult } from './lib/writeResult';

/** Workspace rows audited, public rows the inverter is fitted on, public rows the attacker calibrates its choice on. */
const WORKSPACE_ROWS = 8192;
const FIT_ROWS = 16_384;
const CALIBRATION_ROWS = 4096;
const ATTACKS = ['nearestEmbedding', 'logitLens', 'linearInverter'] as const;
type Attack = (typeof ATTACKS)[number];

interface Rows {
  /** Per layer, [n][d] float32 as captured. */
  layers: Float32Array[];
  inputs: Int32Array;
  next: Int32Array;
  n: number;
}

/** The rows of windows of SEQ + 1 tokens cut from `texts` (as the job cuts them), captured at every layer, up to `maxRows`. */
async function captureRows(bb: Backbone, texts: string[], maxRows: number): Promise<Rows> {
  const windows: Int32Array[] = [];
  let rows = 0;
  for (const text of texts) {
    const ids = bb.tokenize(text);
    for (let s = 0; s + 2 <= ids.length && rows < maxRows; s += SEQ) {
      const w = ids.subarray(s, Math.min(ids.length, s + SEQ + 1));
      windows.push(w);
      rows += w.length - 1;
    }
    if (rows >= maxRows) break;
  }
  const L = bb.info.layers;
  const d = bb.info.hiddenSize;
  const layers = Array.from({ length: L }, () => new Float32Array(rows * d));
  const inputs = new Int32Array(rows);
  const next = new Int32Array(rows);
  let at = 0;
  for (let i = 0; i < windows.length; i += 4) {
    const batch = windows.slice(i, i + 4);
    const cap = await bb.capture(batch.map((w) => w.subarray(0, w.length - 1)), 'all');
    let r = at;
    for (const w of batch) {
      inputs.set(w.subarray(0, w.length - 1), r);
      next.set(w.subarray(1), r);
      r += w.length - 1;
    }
    cap.data.forEach((x, l) => layers[l]!.set(x, at * d));
    at = r;
  }
  return { layers, inputs, next, n: rows };
}

/** Each layer's rows as the server decodes them from a label-private frame at `bits`. */
function asServerSees(rows: Rows, d: number, bits: Bits): Float32Array[] {
  const payload = encodeLayersPayload(rows.layers, rows.n, d, bits);
  return decodeLayersPayload(payload, rows.n, rows.layers.length, d, bits);
}

interface LayerResult { layer: number; nearestEmbedding: number; logitLens: number; linearInverter: number }

async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const { pretrained } = await standInBackbone(log);
  const ws = qualityWorkspace();
  const scratch = path.join(PEERS, 'privacy');
  const bb = await Backbone.open(pretrained, { contextSize: 4 * SEQ, maxSequences: 4, threads: 2 });
  const d = bb.info.hiddenSize;
  const L = bb.info.layers;
  const t0 = Date.now();
  const workspace = await captureRows(bb, scanWorkspace(ws.dir).files.map((f) => f.text), WORKSPACE_ROWS);
  const publicText = fs.readFileSync(pretrainText(), 'utf8');
  const half = Math.floor(publicText.length / 2);
  const fit = await captureRows(bb, [publicText.slice(0, half)], FIT_ROWS);
  const calibration = await captureRows(bb, [publicText.slice(half)], CALIBRATION_ROWS);
  const normEpsilon = bb.info.normEpsilon;
  bb.dispose();
  log(`captured ${workspace.n} workspace rows, ${fit.n} + ${calibration.n} public rows at ${L} layers (${((Date.now() - t0) / 1000).toFixed(0)} s)`);

  const E = (await readModelTensor(pretrained, 'token_embd.weight')).data;
  const lookup = await nearestEmbeddingLookup(E, d, scratch);
  const head = await DeviceHead.open(pretrained, normEpsilon);
  const results: Record<string, { layers: LayerResult[]; calibration: LayerResult[]; recoveredAt: Record<Attack, Uint8Array[]> }> = {};
  try {
    for (const bits of [8, 4] as Bits[]) {
      const wsSeen = asServerSees(workspace, d, bits);
      const fitSeen = asServerSees(fit, d, bits);
      const calSeen = asServerSees(calibration, d, bits);
      const layers: LayerResult[] = [];
      const cal: LayerResult[] = [];
      const recoveredAt = { nearestEmbedding: [], logitLens: [], linearInverter: [] } as Record<Attack, Uint8Array[]>;
      for (let l = 0; l < L; l++) {
        const inverter = fitLinearMap(fitSeen[l]!, rowsOf(E, d, fit.inputs), fit.n, d, d);
        const guess = async (rows: Float32Array, n: number): Promise<Record<Attack, Int32Array>> => ({
          nearestEmbedding: await topIds(lookup, rows, n),
          logitLens: await topIds(head, rows, n),
          linearInverter: await topIds(lookup, applyLinearMap(inverter, rows, n), n),
        });
        const g = await guess(wsSeen[l]!, workspace.n);
        const c = await guess(calSeen[l]!, calibration.n);
        layers.push({ layer: l, nearestEmbedding: share(g.nearestEmbedding, workspace.inputs), logitLens: share(g.logitLens, workspace.next), linearInverter: share(g.linearInverter, workspace.inputs) });
        cal.push({ layer: l, nearestEmbedding: share(c.nearestEmbedding, calibration.inputs), logitLens: share(c.logitLens, calibration.next), linearInverter: share(c.linearInverter, calibration.inputs) });
        // Per workspace token position t: recovered by this attack on this layer (the lens on row t - 1 reads token t).
        for (const a of ATTACKS) {
          const hit = new Uint8Array(workspace.n + 1);
          for (let t = 0; t < workspace.n; t++) {
            if (a === 'logitLens') { if (g.logitLens[t] === workspace.next[t]) hit[t + 1] = 1; } else if (g[a][t] === workspace.inputs[t]) hit[t] = 1;
          }
          recoveredAt[a].push(hit);
        }
        const r = layers[l]!;
        log(`  ${bits}-bit layer ${l}: nearest embedding ${(100 * r.nearestEmbedding).toFixed(1)}%, logit lens ${(100 * r.logitLens).toFixed(1)}%, linear inverter ${(100 * r.linearInverter).toFixed(1)}%`);
      }
      results[bits] = { layers, calibration: cal, recoveredAt };
    }
  } finally {
    lookup.dispose();
    head.dispose();
  }

  /** The attacker's pick on public calibration text among the tapped layers, and what it recovers on the workspace; and the any-attack upper bound. */
  const frameSet = (bits: Bits, tapped: number[]): { attack: Attack; layer: number; recovered: number; anyAttackAnyLayer: number } => {
    const r = results[bits]!;
    let best = { attack: ATTACKS[0] as Attack, layer: tapped[0]!, calibration: -1 };
    for (const l of tapped) for (const a of ATTACKS) if (r.calibration[l]![a] > best.calibration) best = { attack: a, layer: l, calibration: r.calibration[l]![a] };
    let any = 0;
    for (let t = 0; t < workspace.n; t++) if (tapped.some((l) => ATTACKS.some((a) => r.recoveredAt[a][l]![t]))) any++;
    return { attack: best.attack, layer: best.layer, recovered: r.layers[best.layer]![best.attack], anyAttackAnyLayer: any / workspace.n };
  };

  // The trade-off: what each choice a user has gives away, against the held-out loss it trains to (same job, same split).
  const choices: { name: string; labelPrivate: boolean; bits: Bits; skipLayers: number }[] = [
    { name: 'standard, 8-bit, every layer', labelPrivate: false, bits: 8, skipLayers: 0 },
    { name: 'label-private, 8-bit, every layer (the team default)', labelPrivate: true, bits: 8, skipLayers: 0 },
    { name: 'label-private, 4-bit, every layer', labelPrivate: true, bits: 4, skipLayers: 0 },
    { name: 'label-private, 8-bit, skip 2 layers', labelPrivate: true, bits: 8, skipLayers: 2 },
    { name: 'label-private, 8-bit, skip 4 layers', labelPrivate: true, bits: 8, skipLayers: 4 },
  ];
  const configurations = [];
  for (const c of choices) {
    const store = fs.mkdtempSync(path.join(scratch, 'job-'));
    try {
      const r = await new FineTuneJob({ workspace: ws.dir, model: pretrained, storeDir: store, epochs: 2, seqLen: SEQ, bits: c.bits, skipLayers: c.skipLayers, labelPrivate: c.labelPrivate, seed: 1, threads: 2 }).run();
      const set = frameSet(c.bits, tappedLayers(L, c.skipLayers, 1));
      // The standard mode's frames carry every target id: the server reads each training token exactly.
      const recovered = c.labelPrivate ? set.recovered : 1;
      configurations.push({ name: c.name, labelPrivate: c.labelPrivate, bits: c.bits, skipLayers: c.skipLayers, recovered, strongestAttack: c.labelPrivate ? `${set.attack} on layer ${set.layer}` : 'target ids', anyAttackAnyLayer: set.anyAttackAnyLayer, heldOutLoss: r.heldOutLossAfter, heldOutLossBefore: r.heldOutLossBefore, headDenseShare: r.head ? r.head.denseTokens / Math.max(1, r.head.gradientTokens) : null });
      log(`${c.name}: recovered ${(100 * recovered).toFixed(1)}% (${c.labelPrivate ? `${set.attack}, layer ${set.layer}` : 'target ids'}), held-out loss ${r.heldOutLossBefore.toFixed(3)} -> ${r.heldOutLossAfter.toFixed(3)}`);
    } finally {
      fs.rmSync(store, { recursive: true, force: true });
    }
  }

  const record = standInRecord();
  const out = {
    standIn: { ...STAND_IN, sha256: record.sha256, note: `the committed stand-in (bench/stand-in/: ${standInVocabulary()}, pretrained by our ONNX Runtime engine for ${record.steps} steps on ${(record.corpus.bytes / 1e6).toFixed(1)} MB of TypeScript, JavaScript, C and C++ from ${record.corpus.packages} installed packages)` },
    workspace: { bytes: ws.bytes, packages: ws.packages, rows: workspace.n },
    inverter: { fittedOnRows: fit.n, text: 'the first half of the stand-in\'s pretraining text (public code, not the workspace)' },
    calibrationRows: calibration.n,
    layers: results[8]!.layers,
    layersAt4Bits: results[4]!.layers,
    frameSet: { bits8: frameSet(8, tappedLayers(L, 0, 1)), bits4: frameSet(4, tappedLayers(L, 0, 1)) },
    configurations,
    machine: machineDescription(),
  };
  writeResult('privacy.json', out);
  writeProductFigures(L, (bits, skip) => frameSet(bits, tappedLayers(L, skip, 1)));
  const colors = ['#c0392b', '#2e86c1', '#17a589', '#b9770e', '#7d3c98'];
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'privacy-tradeoff.svg'), lossPlotSvg(
    configurations.map((c, i) => ({ label: c.name.replace(' (the team default)', ', default'), points: [[100 * c.recovered, c.heldOutLoss]], color: colors[i % colors.length]! })),
    { title: 'What a server reads back vs what training reaches', xLabel: 'workspace tokens recovered exactly (%), strongest attack', yLabel: 'held-out loss after 2 epochs' },
  ));
  const lp = configurations.find((c) => c.labelPrivate && c.bits === 8 && c.skipLayers === 0)!;
  console.log(`privacy audit (stand-in ${STAND_IN.layers} x ${STAND_IN.embd}): label-private 8-bit, every layer: about ${Math.round(100 * lp.recovered)}% of workspace tokens recovered (${lp.strongestAttack}); standard mode: 100% (target ids)`);
}

const ATTACK_WORDS: Record<Attack, string> = {
  nearestEmbedding: 'the nearest input embedding',
  logitLens: 'the logit lens',
  linearInverter: 'a linear inverter fitted on public code',
};

/** The figures the product quotes (extension/core/text/privacyAudit.ts), from this run. */
function writeProductFigures(L: number, set: (bits: Bits, skipLayers: number) => { attack: Attack; layer: number; recovered: number }): void {
  const rows = ([8, 4] as Bits[]).flatMap((bits) => [0, 2, 4].filter((k) => k < L).map((skipLayers) => {
    const s = set(bits, skipLayers);
    return `    { activationBits: ${bits}, skipLayers: ${skipLayers}, recovered: ${s.recovered.toFixed(4)}, attack: '${ATTACK_WORDS[s.attack]} on layer ${s.layer}' },`;
  }));
  const text = [
    '/**',
    ' * Written by `npm run bench:privacy` (bench/privacy.ts) from the audit it ran; do',
    ' * not edit. For label-private frames: the share of the benchmark workspace\'s',
    ' * tokens a server recovered exactly with the strongest attack (picked on public',
    ' * text), by activation bits and the first layers not sent (bench/results/privacy.json).',
    ' */',
    'export const PRIVACY_AUDIT = {',
    `  model: 'a ${L}-layer stand-in model',`,
    `  layers: ${L},`,
    '  labelPrivate: [',
    ...rows,
    '  ],',
    '} as const;',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(ROOT, 'extension', 'core', 'text', 'privacyAudit.ts'), text);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
