/**
 * Line-completion scoring (bench:lines, bench:side-network): cursor positions
 * in held-out files, greedy completion of the rest of the line, exact match
 * and character-level edit similarity.
 */
import { Backbone } from '../../extension/core/model/Backbone';
import { heldOutFiles } from '../../extension/core/workspace/dataset';
import { generate } from '../../extension/core/completion/generate';
import { scanWorkspace } from '../../extension/core/workspace/scanWorkspace';
import { SeededRandom } from '../../common/SeededRandom';

export const PROMPT_CHARS = 1500;
export const MAX_TOKENS = 32;

export interface Position {
  prompt: string;
  expected: string;
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

/** Cursor positions in the held-out files: 3 per line of at least 12 characters, seeded. */
export function positions(workspace: string): Position[] {
  const files = scanWorkspace(workspace).files;
  const rng = new SeededRandom(7);
  const out: Position[] = [];
  for (const f of heldOutFiles(files)) {
    let at = 0;
    for (const line of f.text.split('\n')) {
      const body = line.trimEnd();
      if (body.trim().length >= 12) {
        const indent = body.length - body.trimStart().length;
        for (let k = 0; k < 3; k++) {
          const cut = indent + 1 + Math.floor(rng.next() * (body.length - indent - 3));
          out.push({ prompt: f.text.slice(Math.max(0, at + cut - PROMPT_CHARS), at + cut), expected: body.slice(cut) });
        }
      }
      at += line.length + 1;
    }
  }
  return out;
}

export async function score(model: string, adapter: string | undefined, cases: Position[]): Promise<{ exactMatch: number; editSimilarity: number; seconds: number }> {
  const bb = await Backbone.open(model, { contextSize: 1024, maxSequences: 1, threads: 1 });
  try {
    if (adapter) await bb.useAdapterFile(adapter);
    let exact = 0;
    let sim = 0;
    const t0 = Date.now();
    for (const c of cases) {
      const g = await generate(bb, c.prompt, { maxTokens: MAX_TOKENS, endAt: (t) => (t.includes('\n') ? t.indexOf('\n') : undefined), reusePrompt: false });
      const got = g.text.split('\n')[0]!.trimEnd();
      if (got === c.expected) exact++;
      sim += editSimilarity(got, c.expected);
    }
    return { exactMatch: exact / cases.length, editSimilarity: sim / cases.length, seconds: (Date.now() - t0) / 1000 };
  } finally {
    bb.dispose();
  }
}

