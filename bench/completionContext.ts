/**
 * What retrieved context costs a completion, on the Qwen2.5-0.5B-shaped Q8_0
 * model (real Qwen2 vocabulary, random weights), with this repository as the
 * workspace:
 *   - the index: built from the workspace (files, seconds), and updated on
 *     the save of a 1,000-line file (milliseconds, median of 20 saves);
 *   - the first token of a completion, with the default context budget and
 *     without context, at the first keystroke of a new line (the context is
 *     retrieved and evaluated) and at the next keystrokes on that line (the
 *     context comes from the backbone's cache), in the fill-in-the-middle
 *     form, the two variants alternating position by position.
 * Random weights: the quality of what is completed is not measured here (the
 * line-completion benchmark's context axis waits for a stand-in that knows
 * code, issue 37).
 *
 *   npm run bench:context [-- --positions 12]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { COMPLETION_CONTEXT_TOKENS, CompletionEngine } from '../extension/core/completion/CompletionEngine';
import { WorkspaceIndex } from '../extension/core/workspace/WorkspaceIndex';
import { machineDescription, median, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const ROOT = path.resolve(__dirname, '..', '..');

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const positions = Number(arg('positions', '12'));
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const store = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-context-bench-'));
  try {
    // The index of this repository's sources.
    let t0 = performance.now();
    const index = await WorkspaceIndex.open(ROOT, store);
    const buildSeconds = (performance.now() - t0) / 1000;
    log(`index: ${index.fileCount} files in ${buildSeconds.toFixed(2)} s`);
    const source = fs.readFileSync(path.join(ROOT, 'extension', 'core', 'job', 'FineTuneJob.ts'), 'utf8').split('\n');
    const thousand = Array.from({ length: 1000 }, (_, i) => source[i % source.length]!).join('\n');
    const saves: number[] = [];
    for (let i = 0; i < 20; i++) {
      t0 = performance.now();
      index.setFile('bench/saved.ts', `${thousand}\n// save ${i}\n`);
      saves.push(performance.now() - t0);
    }
    log(`update on save of a 1,000-line file: median ${median(saves).toFixed(1)} ms`);

    // Completions: cursor positions at line starts of a file, first and later keystrokes, with and without context.
    const file = 'extension/core/completion/CompletionEngine.ts';
    const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
    const lineStarts = [...text.matchAll(/\n {2,}\S/g)].map((m) => m.index! + 1).filter((at) => at > 1500);
    const cursors = Array.from({ length: positions }, (_, i) => lineStarts[Math.floor((i * lineStarts.length) / positions)]!);
    const engine = new CompletionEngine(qwenShapedModel('q8_0'), store);
    const times = { with: { first: [] as number[], next: [] as number[] }, without: { first: [] as number[], next: [] as number[] } };
    const promptTokens = { with: [] as number[], without: [] as number[] };
    try {
      await engine.contextIndex(ROOT);
      await engine.completion(ROOT, text.slice(0, 2000), { file, maxTokens: 1, suffix: '' }); // loads the model
      for (const [i, at] of cursors.entries()) {
        for (const variant of i % 2 === 0 ? (['with', 'without'] as const) : (['without', 'with'] as const)) {
          const budget = variant === 'with' ? COMPLETION_CONTEXT_TOKENS : 0;
          const run = (extra: string) => engine.completion(ROOT, text.slice(0, at) + extra, { file, maxTokens: 1, suffix: text.slice(at, at + 500), contextTokens: budget });
          await engine.completion(ROOT, 'x', { maxTokens: 1 }); // another prompt in between: nothing of this line is cached
          const first = await run('');
          times[variant].first.push(first.promptSeconds);
          promptTokens[variant].push(first.promptTokens);
          for (const typed of ['c', 'co', 'con']) times[variant].next.push((await run(typed)).promptSeconds);
        }
      }
    } finally {
      await engine.dispose();
    }
    const ms = (xs: number[]): number => +(median(xs) * 1000).toFixed(1);
    const result = {
      model: 'Qwen2.5-0.5B-shaped, Q8_0, random weights (bench/.cache)',
      workspace: 'this repository',
      index: { files: index.fileCount, buildSeconds: +buildSeconds.toFixed(2), updateOnSaveOf1000LinesMs: +median(saves).toFixed(2) },
      contextTokensBudget: COMPLETION_CONTEXT_TOKENS,
      positions,
      promptTokens: { withContext: median(promptTokens.with), withoutContext: median(promptTokens.without) },
      firstTokenMs: {
        withContext: { firstKeystroke: ms(times.with.first), nextKeystrokes: ms(times.with.next) },
        withoutContext: { firstKeystroke: ms(times.without.first), nextKeystrokes: ms(times.without.next) },
      },
      firstTokenWithContextOverWithout: {
        firstKeystroke: +(median(times.with.first) / median(times.without.first)).toFixed(3),
        nextKeystrokes: +(median(times.with.next) / median(times.without.next)).toFixed(3),
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
