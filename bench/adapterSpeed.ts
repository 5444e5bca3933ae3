/**
 * Generation with the side network inside llama.cpp vs the plain backbone, on
 * the Qwen2.5-0.5B-shaped Q8_0 model: prompt tokens/s, generated tokens/s and
 * peak RSS, each variant in its own process, alternating rounds. Variants:
 * base, adapter (side network 1), adapterV2 (side network 2: attention with
 * its key/value cache).
 *
 *   npm run bench:adapter [-- --rounds 2]
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { Backbone, defaultThreads } from '../extension/core/model/Backbone';
import { machineDescription, median, peakRssBytes, qwenShapedModel } from './lib/benchModels';
import { randomAdapterFor } from './lib/randomAdapter';
import { writeResult } from './lib/writeResult';

const PROMPT = 256;
const GENERATE = 32;

async function child(mode: string, model: string, adapter: string): Promise<void> {
  const bb = await Backbone.open(model, { contextSize: 1024, maxSequences: 1, threads: defaultThreads() });
  if (mode !== 'base') await bb.useAdapterFile(adapter);
  const prompt = Int32Array.from({ length: PROMPT }, (_, i) => 100 + ((i * 7919) % 150_000));
  const promptTimes: number[] = [];
  const genTimes: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const t0 = process.hrtime.bigint();
    let logits = await bb.logitsAfter(prompt, 0);
    const t1 = process.hrtime.bigint();
    let pos = PROMPT;
    for (let i = 0; i < GENERATE; i++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
      logits = await bb.logitsAfter(Int32Array.of(best), pos++);
    }
    const t2 = process.hrtime.bigint();
    if (rep > 0) {
      promptTimes.push(Number(t1 - t0) / 1e9);
      genTimes.push(Number(t2 - t1) / 1e9);
    }
  }
  bb.dispose();
  process.stdout.write(`${JSON.stringify({ mode, promptTokensPerSecond: PROMPT / median(promptTimes), generateTokensPerSecond: GENERATE / median(genTimes), peakRssBytes: peakRssBytes() })}\n`);
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  if (process.argv.includes('--child')) return child(arg('child', 'base'), arg('model', ''), arg('adapter', ''));
  const model = qwenShapedModel('q8_0');
  const adapters: Record<string, string> = { base: '', adapter: await randomAdapterFor(model, 896, 24), adapterV2: await randomAdapterFor(model, 896, 24, 2) };
  const rounds = Number(arg('rounds', '2'));
  const runs: Record<string, { promptTokensPerSecond: number; generateTokensPerSecond: number; peakRssBytes: number }[]> = { base: [], adapter: [], adapterV2: [] };
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['base', 'adapter', 'adapterV2']) {
      const out = execFileSync(process.execPath, [__filename, '--child', mode, '--model', model, '--adapter', adapters[mode]!], { encoding: 'utf8' });
      const res = JSON.parse(out.trim().split('\n').pop()!);
      runs[mode]!.push(res);
      process.stderr.write(`round ${r + 1} ${mode}: prompt ${res.promptTokensPerSecond.toFixed(1)} tok/s, generate ${res.generateTokensPerSecond.toFixed(2)} tok/s, peak RSS ${(res.peakRssBytes / 2 ** 20).toFixed(0)} MiB\n`);
    }
  }
  const m = (mode: string, k: 'promptTokensPerSecond' | 'generateTokensPerSecond' | 'peakRssBytes'): number => median(runs[mode]!.map((x) => x[k]));
  const result = {
    model: path.basename(model), promptTokens: PROMPT, generatedTokens: GENERATE,
    base: { promptTokensPerSecond: m('base', 'promptTokensPerSecond'), generateTokensPerSecond: m('base', 'generateTokensPerSecond'), peakRssMiB: m('base', 'peakRssBytes') / 2 ** 20 },
    adapter: { promptTokensPerSecond: m('adapter', 'promptTokensPerSecond'), generateTokensPerSecond: m('adapter', 'generateTokensPerSecond'), peakRssMiB: m('adapter', 'peakRssBytes') / 2 ** 20 },
    promptSpeedRatio: m('adapter', 'promptTokensPerSecond') / m('base', 'promptTokensPerSecond'),
    generateSpeedRatio: m('adapter', 'generateTokensPerSecond') / m('base', 'generateTokensPerSecond'),
    rssRatio: m('adapter', 'peakRssBytes') / m('base', 'peakRssBytes'),
    adapterV2: { promptTokensPerSecond: m('adapterV2', 'promptTokensPerSecond'), generateTokensPerSecond: m('adapterV2', 'generateTokensPerSecond'), peakRssMiB: m('adapterV2', 'peakRssBytes') / 2 ** 20 },
    v2PromptSpeedRatio: m('adapterV2', 'promptTokensPerSecond') / m('base', 'promptTokensPerSecond'),
    v2GenerateSpeedRatio: m('adapterV2', 'generateTokensPerSecond') / m('base', 'generateTokensPerSecond'),
    v2RssRatio: m('adapterV2', 'peakRssBytes') / m('base', 'peakRssBytes'),
    machine: machineDescription(),
  };
  writeResult('adapter-speed.json', result);
  console.log(`| base | prompt ${result.base.promptTokensPerSecond.toFixed(1)} tok/s | generate ${result.base.generateTokensPerSecond.toFixed(2)} tok/s | ${result.base.peakRssMiB.toFixed(0)} MiB |`);
  console.log(`| with a v2 adapter | prompt ${result.adapterV2.promptTokensPerSecond.toFixed(1)} tok/s (${result.v2PromptSpeedRatio.toFixed(3)}x) | generate ${result.adapterV2.generateTokensPerSecond.toFixed(2)} tok/s (${result.v2GenerateSpeedRatio.toFixed(3)}x) | ${result.adapterV2.peakRssMiB.toFixed(0)} MiB (${result.v2RssRatio.toFixed(3)}x) |`);
  console.log(`| with adapter | prompt ${result.adapter.promptTokensPerSecond.toFixed(1)} tok/s (${result.promptSpeedRatio.toFixed(3)}x) | generate ${result.adapter.generateTokensPerSecond.toFixed(2)} tok/s (${result.generateSpeedRatio.toFixed(3)}x) | ${result.adapter.peakRssMiB.toFixed(0)} MiB (${result.rssRatio.toFixed(3)}x) |`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
