/**
 * What a label-private job's gradient at the join tells a server about the
 * target ids it never receives. The server plays the attacker with what it
 * has: the last layer's hidden state y of each token (the last layer is
 * always tapped), its own side output (taken as zero here, which it is at the
 * first step and stays small), the public model's final norm and head W, the
 * batch's token count (so the weight w = 1 / tokens), and the device's
 * gradient g at the join. With z = rmsnorm(y), p = softmax(W z) and the
 * norm's Jacobian, g / inv(y) = P((w (Wᵀp - W_t) + A du) ⊙ norm), P the
 * projection off y's direction: every term but W_t is the server's to
 * compute (A du, the head update's, is not, and is what is left over), so t
 * is the row of W nearest to what remains. Ground truth: the same job in the
 * standard mode, whose frames carry the ids.
 *
 *   npm run bench:label-leak     (writes bench/results/labelLeak.json)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dequantizeRows, joinBits } from '../common/ActivationQuantizer';
import { decodeBatchPayload, decodeLayersPayload } from '../common/batchPayload';
import { decodeDeviceFrame } from '../common/codec';
import type { DeviceMessage, JobConfig } from '../common/messages';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { readModelTensor } from '../extension/core/model/Backbone';
import { writeTinyModel } from '../extension/core/model/tinyModel';
import { MobiServer } from '../server/MobiServer';
import { BENCH_CACHE, machineDescription } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const STEPS = 12;

interface Recorded {
  config: JobConfig;
  train: Map<number, { rows: number; payload: Buffer }>;
  grad: Map<number, { rows: number; tokens: number; payload: Buffer }>;
}

async function record(model: string, workspace: string, labelPrivate: boolean, headRank: number): Promise<Recorded> {
  const server = new MobiServer({ dataDir: fs.mkdtempSync(path.join(BENCH_CACHE, 'leak-server-')), port: 0 });
  const { url } = await server.start();
  const rec: Recorded = { config: undefined as unknown as JobConfig, train: new Map(), grad: new Map() };
  try {
    const token = await server.users.add('leak');
    await new FineTuneJob({
      workspace, model, storeDir: fs.mkdtempSync(path.join(BENCH_CACHE, 'leak-store-')), server: { url, token }, labelPrivate, headRank,
      steps: STEPS, seqLen: 64, batchSize: 4, seed: 7, bits: 8, threads: 1, log: () => undefined,
      onFrameSent: (f) => {
        const { message: m, payload } = decodeDeviceFrame(Buffer.from(f));
        if (m.type === 'job/create') rec.config = (m as DeviceMessage<'job/create'>).config;
        if (m.type === 'batch/train') rec.train.set(m.index, { rows: m.rows, payload: Buffer.from(payload) });
        if (m.type === 'batch/grad') rec.grad.set(m.index, { rows: m.rows, tokens: m.tokens, payload: Buffer.from(payload) });
      },
    }).run();
  } finally {
    await server.stop();
  }
  return rec;
}

async function main(): Promise<void> {
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  const model = path.join(BENCH_CACHE, 'leak-tiny-4x128-q8_0.gguf');
  if (!fs.existsSync(model)) writeTinyModel({ out: model, layers: 4, embd: 128, heads: 4, kvHeads: 2, type: 'q8_0', seed: 17 });
  const workspace = path.resolve(__dirname, '..', '..', 'common');
  const wT = await readModelTensor(model, 'output.weight').catch(() => readModelTensor(model, 'token_embd.weight'));
  const normT = await readModelTensor(model, 'output_norm.weight');
  const W = wT.data;
  const norm = normT.data;
  const d = norm.length;
  const V = W.length / d;
  const truth = await record(model, workspace, false, 0);
  const results: Record<string, unknown>[] = [];
  for (const headRank of [0, 16]) {
    const lp = await record(model, workspace, true, headRank);
    const nLayers = lp.config.tappedLayers.length;
    let tokens = 0;
    let hits = 0;
    let firstTokens = 0;
    let firstHits = 0;
    for (const [index, g] of lp.grad) {
      const t = truth.train.get(index)!;
      const ids = decodeBatchPayload(t.payload, t.rows, nLayers, d, truth.config.bits, V);
      const layers = decodeLayersPayload(lp.train.get(index)!.payload, g.rows, nLayers, d, lp.config.bits);
      const y = layers[nLayers - 1]!;
      const grad = dequantizeRows(g.payload, g.rows, d, joinBits(lp.config.bits));
      const w = 1 / g.tokens;
      for (let j = 0; j < g.rows; j++) {
        if (!ids.mask[j]) continue;
        let ss = 0;
        for (let i = 0; i < d; i++) ss += y[j * d + i]! ** 2;
        const inv = 1 / Math.sqrt(ss / d + 1e-5);
        const xhat = Array.from({ length: d }, (_, i) => y[j * d + i]! * inv);
        const z = xhat.map((x, i) => x * norm[i]!);
        const logits = new Float64Array(V);
        let max = -Infinity;
        for (let v = 0; v < V; v++) {
          let s = 0;
          for (let i = 0; i < d; i++) s += W[v * d + i]! * z[i]!;
          logits[v] = s;
          max = Math.max(max, s);
        }
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(logits[v]! - max);
        const A = new Float64Array(d);
        for (let v = 0; v < V; v++) {
          const p = Math.exp(logits[v]! - max) / sum;
          for (let i = 0; i < d; i++) A[i] += p * W[v * d + i]!;
        }
        // r = P(w A ⊙ norm) - g / inv, which is P(w W_t ⊙ norm) plus what the server cannot compute.
        const project = (x: number[]): number[] => {
          const dot = x.reduce((a, xi, i) => a + xi * xhat[i]!, 0) / d;
          return x.map((xi, i) => xi - dot * xhat[i]!);
        };
        const r = project(Array.from(A, (a, i) => w * a * norm[i]!)).map((x, i) => x - grad[j * d + i]! / inv);
        let best = -1;
        let bestDist = Infinity;
        for (let v = 0; v < V; v++) {
          const cand = project(Array.from({ length: d }, (_, i) => w * W[v * d + i]! * norm[i]!));
          let dist = 0;
          for (let i = 0; i < d; i++) dist += (cand[i]! - r[i]!) ** 2;
          if (dist < bestDist) {
            bestDist = dist;
            best = v;
          }
        }
        const hit = best === ids.targets[j];
        tokens++;
        if (hit) hits++;
        if (index === 0) {
          firstTokens++;
          if (hit) firstHits++;
        }
      }
    }
    const row = { headRank, tokens, recoveredShare: hits / tokens, firstBatchTokens: firstTokens, firstBatchRecoveredShare: firstHits / firstTokens };
    process.stderr.write(`${JSON.stringify(row)}\n`);
    results.push(row);
  }
  const out = {
    model: `${path.basename(model)} (4 layers x 128, the built-in vocabulary of ${V}, random weights)`,
    workspace: 'the repository\'s common/ folder',
    steps: STEPS, bits: 8,
    attack: 'the target row of the public head nearest to the gradient at the join, after the server removes what it can compute from the last layer (the side output taken as zero)',
    results,
    machine: machineDescription(),
  };
  writeResult('labelLeak.json', out);
  for (const r of results) console.log(`head rank ${String(r.headRank)}: ${(100 * (r.recoveredShare as number)).toFixed(1)}% of ${String(r.tokens)} target ids read from the gradient (first batch ${(100 * (r.firstBatchRecoveredShare as number)).toFixed(1)}%)`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
