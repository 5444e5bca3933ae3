/**
 * Capture cost: tokens/s of a plain node-llama-cpp forward pass vs our forward
 * with capture of all layers, on a Qwen2.5-0.5B-shaped model, and the peak RSS
 * of each. Each variant runs in its own child process (so peak RSS is its
 * own), alternating, several rounds; ratios are of medians from this one run.
 *
 *   npm run bench:capture [-- --type q8_0|q4_0 --tokens 512 --rounds 3]
 *   npm run bench:capture -- --shape coder-1.5b [--layout Q4_K_M]
 *       the Qwen2.5-Coder-1.5B shape (qwen2, 28 x 1536) in a layout made by
 *       llama.cpp's quantizer (bench/lib/benchModels.ts qwenCoder15Model)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone, defaultThreads } from '../extension/core/model/Backbone';
import { machineDescription, median, peakRssBytes, qwenCoder15Model, qwenShapedModel } from './lib/benchModels';
import type { QuantizedLayout } from '../extension/core/model/quantizeModel';
import { writeResult } from './lib/writeResult';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

function tokensFor(n: number, vocab: number): Int32Array {
  // Deterministic ids spread over the vocabulary (content does not change the cost).
  return Int32Array.from({ length: n }, (_, i) => 100 + ((i * 7919) % (vocab - 200)));
}

async function child(mode: string, model: string, nTokens: number, reps: number): Promise<void> {
  const threads = defaultThreads();
  const times: number[] = [];
  if (mode === 'plain') {
    const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
    const m = await llama.loadModel({ modelPath: model });
    const ctx = await m.createContext({ contextSize: nTokens + 16, batchSize: nTokens, threads, flashAttention: true });
    const seq = ctx.getSequence();
    const tokens = Array.from(tokensFor(nTokens, m.tokens.bos === undefined ? 151936 : 151936)) as unknown as import('node-llama-cpp').Token[];
    for (let r = 0; r <= reps; r++) {
      await seq.clearHistory();
      const t0 = process.hrtime.bigint();
      await seq.evaluateWithoutGeneratingNewTokens(tokens);
      const dt = Number(process.hrtime.bigint() - t0) / 1e9;
      if (r > 0) times.push(dt); // round 0 warms up
    }
    await ctx.dispose();
    await m.dispose();
  } else {
    const bb = await Backbone.open(model, { contextSize: nTokens, maxSequences: 1, threads });
    const tokens = tokensFor(nTokens, bb.info.vocabularySize);
    for (let r = 0; r <= reps; r++) {
      const t0 = process.hrtime.bigint();
      await bb.capture([tokens], 'all');
      const dt = Number(process.hrtime.bigint() - t0) / 1e9;
      if (r > 0) times.push(dt);
    }
    bb.dispose();
  }
  process.stdout.write(`${JSON.stringify({ mode, tokensPerSecond: nTokens / median(times), peakRssBytes: peakRssBytes(), threads })}\n`);
}

async function main(): Promise<void> {
  const type = arg('type', 'q8_0') as 'q8_0' | 'q4_0';
  const nTokens = Number(arg('tokens', '512'));
  const rounds = Number(arg('rounds', '3'));
  if (process.argv.includes('--child')) {
    await child(arg('child', 'plain'), arg('model', ''), nTokens, Number(arg('reps', '3')));
    return;
  }
  const coder = arg('shape', 'qwen2.5-0.5b') === 'coder-1.5b';
  const layout = arg('layout', 'Q4_K_M') as QuantizedLayout;
  const model = coder ? await qwenCoder15Model(layout) : qwenShapedModel(type);
  const runs: Record<string, { tokensPerSecond: number; peakRssBytes: number }[]> = { plain: [], capture: [] };
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['plain', 'capture']) {
      const out = execFileSync(process.execPath, [__filename, '--child', mode, '--model', model, '--tokens', String(nTokens), '--reps', '3'], { encoding: 'utf8' });
      const res = JSON.parse(out.trim().split('\n').pop()!);
      runs[mode]!.push(res);
      process.stderr.write(`round ${r + 1} ${mode}: ${res.tokensPerSecond.toFixed(1)} tok/s, peak RSS ${(res.peakRssBytes / 2 ** 20).toFixed(0)} MiB\n`);
    }
  }
  const tps = (m: string): number => median(runs[m]!.map((x) => x.tokensPerSecond));
  const rss = (m: string): number => median(runs[m]!.map((x) => x.peakRssBytes));
  const result = {
    model: path.basename(model),
    modelBytes: fs.statSync(model).size,
    tokensPerForward: nTokens,
    rounds,
    plainTokensPerSecond: tps('plain'),
    captureTokensPerSecond: tps('capture'),
    captureSpeedRatio: tps('capture') / tps('plain'),
    plainPeakRssMiB: rss('plain') / 2 ** 20,
    capturePeakRssMiB: rss('capture') / 2 ** 20,
    captureRssRatio: rss('capture') / rss('plain'),
    machine: machineDescription(),
  };
  fs.mkdirSync(path.resolve(__dirname, '..', '..', 'bench', 'results'), { recursive: true });
  writeResult(coder ? `capture-coder-1.5b-${layout}.json` : `capture-${type}.json`, result);
  console.log(`| ${coder ? layout : type} | plain ${result.plainTokensPerSecond.toFixed(1)} tok/s | capture all ${result.captureTokensPerSecond.toFixed(1)} tok/s | speed ratio ${result.captureSpeedRatio.toFixed(3)} | RSS plain ${result.plainPeakRssMiB.toFixed(0)} MiB | capture ${result.capturePeakRssMiB.toFixed(0)} MiB | ratio ${result.captureRssRatio.toFixed(3)} |`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
