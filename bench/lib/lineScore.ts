/**
 * Line-completion scoring (bench:lines, bench:side-network): cursor positions
 * in held-out files, greedy completion of the rest of the line, exact match
 * and character-level edit similarity.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Backbone } from '../../extension/core/model/Backbone';
import { completionPrompt } from '../../extension/core/completion/CompletionEngine';
import { retrievedContext } from '../../extension/core/completion/retrievedContext';
import { WorkspaceIndex } from '../../extension/core/workspace/WorkspaceIndex';
import { heldOutFiles } from '../../extension/core/workspace/dataset';
import { generate } from '../../extension/core/completion/generate';
import { scanWorkspace } from '../../extension/core/workspace/scanWorkspace';
import { SeededRandom } from '../../common/SeededRandom';

export const PROMPT_CHARS = 1500;
export const MAX_TOKENS = 32;

export interface Position {
  /** The held-out file, workspace-relative. */
  file: string;
  prompt: string;
  expected: string;
}

/** One variant's scores: exact match, edit similarity, the whole run's seconds and the mean seconds to the first token. */
export interface LineScore {
  exactMatch: number;
  editSimilarity: number;
  seconds: number;
  firstTokenSeconds: number;
}

/** Levenshtein distance of two strings (characters). */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

function editSimilarity(a: string, b: string): number {
  const n = Math.max(a.length, b.length);
  return n === 0 ? 1 : 1 - editDistance(a, b) / n;
}

/** Cursor positions in the held-out files: `perLine` (default 3) per line of at least 12 characters, seeded. */
export function positions(workspace: string, perLine = 3): Position[] {
  const files = scanWorkspace(workspace).files;
  const rng = new SeededRandom(7);
  const out: Position[] = [];
  for (const f of heldOutFiles(files)) {
    let at = 0;
    for (const line of f.text.split('\n')) {
      const body = line.trimEnd();
      if (body.trim().length >= 12) {
        const indent = body.length - body.trimStart().length;
        for (let k = 0; k < perLine; k++) {
          const cut = indent + 1 + Math.floor(rng.next() * (body.length - indent - 3));
          out.push({ file: f.path, prompt: f.text.slice(Math.max(0, at + cut - PROMPT_CHARS), at + cut), expected: body.slice(cut) });
        }
      }
      at += line.length + 1;
    }
  }
  return out;
}

/**
 * Scores a variant: the base model (adapter undefined) or an adapter, each
 * prompt as completions build it (completionPrompt), with the workspace's
 * retrieved context when `context` is given (the product's index and budget
 * rule; the file being completed is never its own context).
 */
export async function score(model: string, adapter: string | undefined, cases: Position[], context?: { workspace: string; tokens: number }): Promise<LineScore> {
  // With context, the window the product's completions use (2048): 1024 holds the 1,500 characters but not their context too.
  const bb = await Backbone.open(model, { contextSize: context ? 2048 : 1024, maxSequences: 1, threads: 1 });
  const store = context && fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-lines-index-'));
  try {
    if (adapter) await bb.useAdapterFile(adapter);
    const index = context && (await WorkspaceIndex.open(context.workspace, store!));
    let exact = 0;
    let sim = 0;
    let firstToken = 0;
    const t0 = Date.now();
    for (const c of cases) {
      const ctx = index ? retrievedContext(index, c.file, c.prompt, context.tokens, (t) => bb.tokenize(t, false).length).text : '';
      const { tokens } = completionPrompt(bb, c.prompt, { prefixChars: PROMPT_CHARS, maxTokens: MAX_TOKENS }, ctx);
      const g = await generate(bb, tokens, { maxTokens: MAX_TOKENS, endAt: (t) => (t.includes('\n') ? t.indexOf('\n') : undefined), reusePrompt: false });
      const got = g.text.split('\n')[0]!.trimEnd();
      if (got === c.expected) exact++;
      sim += editSimilarity(got, c.expected);
      firstToken += g.promptSeconds;
    }
    return { exactMatch: exact / cases.length, editSimilarity: sim / cases.length, seconds: (Date.now() - t0) / 1000, firstTokenSeconds: firstToken / cases.length };
  } finally {
    bb.dispose();
    if (store) fs.rmSync(store, { recursive: true, force: true });
  }
}
