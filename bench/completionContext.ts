/**
 * What retrieved context costs a completion, on the Qwen2.5-0.5B-shaped Q8_0
 * model (real Qwen2 vocabulary, random weights), with this repository as the
 * workspace:
 *   - the index: built from the workspace (files, seconds), and updated on
 *     the save of a 1,000-line file (milliseconds, median of 20 saves), with
 *     the event loop's delay meanwhile (perf_hooks, 5 ms resolution);
 *   - the first token of a completion in the fill-in-the-middle form, with
 *     the default context budget and without context (two engines, each its
 *     own backbone and cache, taking turns place by place): typing through 8
 *     consecutive lines at each of `walks` places of a file, completed at the
 *     first keystroke of each line and at 3 more; reported apart: the first
 *     line of a place (nothing cached), the first keystroke of the next lines
 *     (new line) and the keystrokes after (same line).
 * Random weights: the quality of what is completed is not measured here (the
 * line-completion benchmark's context axis waits for a stand-in that knows
 * code, issue 37).
 *
 *   npm run bench:context [-- --walks 4]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { COMPLETION_CONTEXT_TOKENS, CompletionEngine } from '../extension/core/completion/CompletionEngine';
import { WorkspaceIndex } from '../extension/core/workspace/WorkspaceIndex';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const ROOT = path.resolve(__dirname, '..', '..');

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const walks = Number(arg('walks', '4'));
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-context-bench-'));
  try {
    // The index of this repository's sources.
    // The event loop's delay while the index is built and updated (it runs on the extension host's thread).
    const delay = monitorEventLoopDelay({ resolution: 5 });
    delay.enable();
    let t0 = performance.now();
    const index = await WorkspaceIndex.open(ROOT, store);
    const buildSeconds = (performance.now() - t0) / 1000;
    log(`index: ${index.fileCount} files in ${buildSeconds.toFixed(2)} s`);
    const source = fs.readFileSync(path.join(ROOT, 'extension', 'core', 'job', 'FineTuneJob.ts'), 'utf8').split('\n');
    const thousand = Array.from({ length: 1000 }, (_, i) => source[i % source.length]!).join('\n');
    const saves: number[] = [];
    for (let i = 0; i < 20; i++) {
      t0 = performance.now();
      index.setFile('simulated-save.ts', `${thousand}\n// save ${i}\n`);
      saves.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 20)); // saves are events apart, as in an editor
    }
    delay.disable();
    const loopDelayMs = { p99: +(delay.percentile(99) / 1e6).toFixed(1), max: +(delay.max / 1e6).toFixed(1) };
    log(`update on save of a 1,000-line file: median ${median(saves).toFixed(1)} ms; event-loop delay while building and updating: p99 ${loopDelayMs.p99} ms, max ${loopDelayMs.max} ms`);

    // Typing through a file: at each of `walks` places, 8 consecutive lines, each completed at its first
    // keystroke and at 3 more; one engine (one backbone, its own cache) with the default context, one without.
    const file = 'extension/core/completion/CompletionEngine.ts';
    const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
    const lineStarts = [...text.matchAll(/\n/g)].map((m) => m.index! + 1).filter((at) => at > 1500);
    const engines = { with: new CompletionEngine(qwenShapedModel('q8_0'), store), without: new CompletionEngine(qwenShapedModel('q8_0'), store) };
    const times = { with: { cold: [] as number[], first: [] as number[], next: [] as number[] }, without: { cold: [] as number[], first: [] as number[], next: [] as number[] } };
    const promptTokens = { with: [] as number[], without: [] as number[] };
    try {
      await engines.with.contextIndex(ROOT);
      for (const e of Object.values(engines)) await e.completion(ROOT, 'x', { maxTokens: 1 }); // loads the model
      for (let w = 0; w < walks; w++) {
        const first = Math.floor((w * (lineStarts.length - 9)) / walks);
        for (const variant of w % 2 === 0 ? (['with', 'without'] as const) : (['without', 'with'] as const)) {
          const engine = engines[variant];
          const budget = variant === 'with' ? COMPLETION_CONTEXT_TOKENS : 0;
          await engine.completion(ROOT, 'x', { maxTokens: 1 }); // nothing of this place is cached
          for (let k = 0; k < 8; k++) {
            const at = lineStarts[first + k]!;
            const run = (typed: string) => engine.completion(ROOT, text.slice(0, at) + typed, { file, maxTokens: 1, suffix: text.slice(at, at + 500), contextTokens: budget });
            const r = await run('');
            times[variant][k === 0 ? 'cold' : 'first'].push(r.promptSeconds);
            promptTokens[variant].push(r.promptTokens);
            for (const typed of ['c', 'co', 'con']) times[variant].next.push((await run(typed)).promptSeconds);
          }
        }
      }
    } finally {
      for (const e of Object.values(engines)) await e.dispose();
    }
    const ms = (xs: number[]): number => +(median(xs) * 1000).toFixed(1);
    const result = {
      model: 'Qwen2.5-0.5B-shaped, Q8_0, random weights (bench/.cache)',
      workspace: 'this repository',
      index: { files: index.fileCount, buildSeconds: +buildSeconds.toFixed(2), updateOnSaveOf1000LinesMs: +median(saves).toFixed(2), eventLoopDelayWhileBuildingAndUpdatingMs: loopDelayMs },
      contextTokensBudget: COMPLETION_CONTEXT_TOKENS,
      walks,
      linesPerWalk: 8,
      promptTokens: { withContext: median(promptTokens.with), withoutContext: median(promptTokens.without) },
      firstTokenMs: {
        withContext: { nothingCached: ms(times.with.cold), newLine: ms(times.with.first), sameLine: ms(times.with.next) },
        withoutContext: { nothingCached: ms(times.without.cold), newLine: ms(times.without.first), sameLine: ms(times.without.next) },
      },
      firstTokenWithContextOverWithout: {
        nothingCached: +(median(times.with.cold) / median(times.without.cold)).toFixed(3),
        newLine: +(median(times.with.first) / median(times.without.first)).toFixed(3),
        sameLine: +(median(times.with.next) / median(times.without.next)).toFixed(3),
        all: +(median([...times.with.first, ...times.with.next]) / median([...times.without.first, ...times.without.next])).toFixed(3),
      },
      machine: machineDescription(),
    };
    log(JSON.stringify(result, null, 2));
    log(`written to ${writeResult('completionContext.json', result)}`);
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
