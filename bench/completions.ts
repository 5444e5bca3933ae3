/**
 * Completion latency as a user feels it, on the Qwen2.5-0.5B-shaped Q8_0 model
 * (real Qwen2 vocabulary, random weights), one thread less than the cores: a
 * 1,500-character prefix of this repository's source, then simulated
 * keystrokes at its end; for each, time to the first token and to the end of
 * a 24-token completion, with the prompt cache reused and without (the
 * whole prompt evaluated again), on the base model and with an adapter.
 *
 *   npm run bench:completions [-- --keys 4]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Backbone, defaultThreads } from '../extension/core/Backbone';
import { promptWindow } from '../extension/core/CompletionEngine';
import { generate } from '../extension/core/generate';
import { machineDescription, median, qwenShapedModel } from './benchModels';
import { randomAdapterFor } from './randomAdapter';

const ROOT = path.resolve(__dirname, '..', '..');
const TOKENS = 24;

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const keys = Number(arg('keys', '4'));
  const model = qwenShapedModel('q8_0');
  const adapter = await randomAdapterFor(model, 896, 24);
  const text = fs.readFileSync(path.join(ROOT, 'extension', 'core', 'job', 'FineTuneJob.ts'), 'utf8').slice(0, 1500);
  const typed = 'const x = 1;'.slice(0, keys);
  const bb = await Backbone.open(model, { contextSize: 2048, maxSequences: 1, threads: defaultThreads() });
  const sampling = { greedy: 0, topP: 0 };
  const results: Record<string, { firstTokenSeconds: number[]; completionSeconds: number[]; promptTokens: number; evaluated: number[] }> = {};
  try {
    for (const withAdapter of [false, true]) {
      if (withAdapter) await bb.useAdapter(fs.readFileSync(adapter));
      else await bb.clearAdapter();
      for (const reuse of [true, false]) {
        const key = `${withAdapter ? 'adapter' : 'base'}/${reuse ? 'reuse' : 'no-reuse'}`;
        const r = (results[key] = { firstTokenSeconds: [] as number[], completionSeconds: [] as number[], promptTokens: 0, evaluated: [] as number[] });
        await generate(bb, promptWindow(text), { maxTokens: 1, reusePrompt: false }); // the state a user is in before typing
        for (let k = 1; k <= keys; k++) {
          const g = await generate(bb, promptWindow(text + typed.slice(0, k)), { maxTokens: TOKENS, reusePrompt: reuse });
          const perToken = g.tokens.length > 1 ? g.generateSeconds / g.tokens.length : 0;
          r.firstTokenSeconds.push(g.promptSeconds + perToken);
          r.completionSeconds.push(g.promptSeconds + g.generateSeconds);
          r.promptTokens = g.promptTokens;
          r.evaluated.push(g.promptTokensEvaluated);
        }
        process.stderr.write(`${key}: first token ${median(r.firstTokenSeconds).toFixed(3)} s, completion ${median(r.completionSeconds).toFixed(3)} s, evaluated ${r.evaluated.join(',')} of ${r.promptTokens}\n`);
      }
    }
    // Sampling cost per generated token: top-p at temperature 0.2 against greedy, base model, same prompt.
    await bb.clearAdapter();
    const perToken = async (temperature: number): Promise<number> => {
      const times: number[] = [];
      for (let k = 0; k < 3; k++) {
        const g = await generate(bb, promptWindow(text), { maxTokens: TOKENS, temperature, topP: 0.9, seed: k + 1 });
        times.push(g.generateSeconds / Math.max(1, g.tokens.length));
      }
      return median(times);
    };
    sampling.greedy = await perToken(0);
    sampling.topP = await perToken(0.2);
    process.stderr.write(`per token: greedy ${sampling.greedy.toFixed(4)} s, top-p ${sampling.topP.toFixed(4)} s\n`);
  } finally {
    bb.dispose();
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
  const file = path.join(ROOT, 'bench', 'results', 'completions.json');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`time to first token after a keystroke, reuse / no reuse: ${out.firstTokenReuseOverNoReuse.toFixed(3)} (goal <= 0.15)`);
  console.log(`top-p (temperature 0.2) / greedy per generated token: ${out.topPOverGreedyPerToken.toFixed(3)} (goal <= 1.2)`);
  console.log(`with an adapter / without: first token ${out.firstTokenAdapterOverBase.toFixed(3)}, whole completion ${out.completionAdapterOverBase.toFixed(3)} (goal <= 1.1)`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
