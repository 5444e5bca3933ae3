/**
 * Completion latency as a user feels it, on the Qwen2.5-0.5B-shaped Q8_0 model
 * (real Qwen2 vocabulary, random weights), one thread less than the cores: a
 * 1,500-character prefix of this repository's source, then simulated
 * keystrokes at its end; for each, time to the first token and to the end of
 * a 24-token completion, with the prompt cache reused and without (the
 * whole prompt evaluated again), on the base model and with an adapter.
 *
 *   npm run bench:completions [-- --keys 8]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone, defaultThreads } from '../extension/core/model/Backbone';
import { promptWindow } from '../extension/core/completion/CompletionEngine';
import { generate } from '../extension/core/completion/generate';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { randomAdapterFor } from './lib/randomAdapter';
import { writeResult } from './lib/writeResult';

const ROOT = path.resolve(__dirname, '..', '..');
const TOKENS = 24;

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const keys = Number(arg('keys', '8'));
  const model = qwenShapedModel('q8_0');
  const adapter = await randomAdapterFor(model, 896, 24);
  const text = fs.readFileSync(path.join(ROOT, 'extension', 'core', 'job', 'FineTuneJob.ts'), 'utf8').slice(0, 1500);
  const typed = 'const x = 1;'.repeat(4).slice(0, keys);
  // Two backbones, one with the adapter: the variants alternate keystroke by keystroke, so the machine's drift hits them alike.
  const open = (): Promise<Backbone> => Backbone.open(model, { contextSize: 2048, maxSequences: 1, threads: defaultThreads() });
  const backbones = { base: await open(), adapter: await open() };
  await backbones.adapter.useAdapterFile(adapter);
  const sampling = { greedy: 0, topP: 0 };
  type Series = { firstTokenSeconds: number[]; completionSeconds: number[]; promptTokens: number; evaluated: number[] };
  const results: Record<string, Series> = {};
  try {
    for (const bb of Object.values(backbones)) await generate(bb, promptWindow(text), { maxTokens: 1, reusePrompt: false }); // the state a user is in before typing
    for (let k = 1; k <= keys; k++) {
      for (const reuse of [true, false]) {
        for (const [name, bb] of Object.entries(backbones)) {
          const key = `${name}/${reuse ? 'reuse' : 'no-reuse'}`;
          const r = (results[key] ??= { firstTokenSeconds: [], completionSeconds: [], promptTokens: 0, evaluated: [] });
          const g = await generate(bb, promptWindow(text + typed.slice(0, k)), { maxTokens: TOKENS, reusePrompt: reuse });
          const perToken = g.tokens.length > 1 ? g.generateSeconds / g.tokens.length : 0;
          r.firstTokenSeconds.push(g.promptSeconds + perToken);
          r.completionSeconds.push(g.promptSeconds + g.generateSeconds);
          r.promptTokens = g.promptTokens;
          r.evaluated.push(g.promptTokensEvaluated);
        }
      }
    }
    for (const [key, r] of Object.entries(results)) {
      process.stderr.write(`${key}: first token ${median(r.firstTokenSeconds).toFixed(3)} s, completion ${median(r.completionSeconds).toFixed(3)} s, evaluated ${r.evaluated.join(',')} of ${r.promptTokens}\n`);
    }
    // Sampling cost per generated token: top-p at temperature 0.2 against greedy, base model, alternating.
    const greedy: number[] = [];
    const topP: number[] = [];
    for (let k = 0; k < 3; k++) {
      for (const [temperature, into] of [[0, greedy], [0.2, topP]] as const) {
        const g = await generate(backbones.base, promptWindow(text), { maxTokens: TOKENS, temperature, topP: 0.9, seed: k + 1 });
        into.push(g.generateSeconds / Math.max(1, g.tokens.length));
      }
    }
    sampling.greedy = median(greedy);
    sampling.topP = median(topP);
    process.stderr.write(`per token: greedy ${sampling.greedy.toFixed(4)} s, top-p ${sampling.topP.toFixed(4)} s\n`);
  } finally {
    for (const bb of Object.values(backbones)) bb.dispose();
  }
  const m = (k: string, f: 'firstTokenSeconds' | 'completionSeconds'): number => median(results[k]![f]);
  const out = {
    model: path.basename(model), prefixChars: text.length, keystrokes: keys, completionTokens: TOKENS, threads: defaultThreads(),
    medians: Object.fromEntries(Object.keys(results).map((k) => [k, { firstTokenSeconds: m(k, 'firstTokenSeconds'), completionSeconds: m(k, 'completionSeconds'), promptTokens: results[k]!.promptTokens, evaluated: results[k]!.evaluated }])),
    firstTokenReuseOverNoReuse: m('base/reuse', 'firstTokenSeconds') / m('base/no-reuse', 'firstTokenSeconds'),
    firstTokenAdapterOverBase: m('adapter/reuse', 'firstTokenSeconds') / m('base/reuse', 'firstTokenSeconds'),
    completionAdapterOverBase: m('adapter/reuse', 'completionSeconds') / m('base/reuse', 'completionSeconds'),
    samplingSecondsPerToken: sampling,
    topPOverGreedyPerToken: sampling.topP / sampling.greedy,
    goals: { firstTokenReuseOverNoReuse: 0.15, adapterOverBase: 1.1, topPOverGreedyPerToken: 1.2 },
    machine: machineDescription(),
  };
  writeResult('completions.json', out);
  console.log(`time to first token after a keystroke, reuse / no reuse: ${out.firstTokenReuseOverNoReuse.toFixed(3)} (goal <= 0.15)`);
  console.log(`top-p (temperature 0.2) / greedy per generated token: ${out.topPOverGreedyPerToken.toFixed(3)} (goal <= 1.2)`);
  console.log(`with an adapter / without: first token ${out.firstTokenAdapterOverBase.toFixed(3)}, whole completion ${out.completionAdapterOverBase.toFixed(3)} (goal <= 1.1)`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
