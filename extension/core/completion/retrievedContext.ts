import type { Snippet, WorkspaceIndex } from '../workspace/WorkspaceIndex';

/** Complete lines before the cursor's line whose identifiers make the query. */
export const QUERY_LINES = 20;
/** Snippets looked at per completion (the budget decides how many are used). */
const CANDIDATES = 6;

/** The line comment of a file's language, by its extension (`//` when unknown). */
export function lineCommentFor(file: string): string {
  const ext = file.slice(file.lastIndexOf('.') + 1).toLowerCase();
  if (['py', 'sh', 'bash', 'zsh', 'rb', 'pl', 'r', 'yaml', 'yml', 'toml', 'cmake', 'ps1', 'jl', 'nim', 'ex', 'exs', 'tf', 'mk'].includes(ext)) return '#';
  if (['sql', 'lua', 'hs', 'elm', 'ada', 'adb'].includes(ext)) return '--';
  if (['lisp', 'clj', 'cljs', 'el', 'scm', 'asm', 's'].includes(ext)) return ';';
  if (['erl', 'hrl', 'tex', 'm'].includes(ext)) return '%';
  return '//';
}

/** The query moves in steps of this many lines, so the context (and the cache of it) holds while the cursor moves down a few lines. */
export const QUERY_STEP = 8;

/**
 * What retrieval searches with: the last QUERY_LINES complete lines before a
 * line that moves in steps of QUERY_STEP lines (in a file's first QUERY_STEP
 * lines, the cursor's line). The line being typed is never in it, so every
 * keystroke on a line, and on the next few lines, gives the same context,
 * which the backbone then reuses from its cache.
 */
export function contextQuery(prefix: string): string {
  const lines = prefix.split('\n');
  const cursor = lines.length - 1;
  const end = cursor >= QUERY_STEP ? cursor - (cursor % QUERY_STEP) : cursor;
  return lines.slice(Math.max(0, end - QUERY_LINES), end).join('\n');
}

/** A snippet as the prompt shows it: a comment naming its file, then each of its lines commented out. */
export function formatSnippet(s: Snippet, comment: string): string {
  const lines = s.text.replace(/\s+$/, '').split('\n').map((l) => (l ? `${comment} ${l}` : comment));
  return `${comment} Path: ${s.path}\n${lines.join('\n')}\n`;
}

/** Where a snippet of context came from. */
export type ContextSource = 'definition' | 'recent edit' | 'retrieved';

/**
 * A snippet the editor found for the cursor: the definition of a symbol near
 * it (from the language server) or a range of another file edited lately.
 */
export interface EditorSnippet {
  /** Workspace-relative, forward slashes. */
  path: string;
  /** First line, 0-based. */
  startLine: number;
  text: string;
  source: 'definition' | 'recent edit';
}

/** A snippet in the context, and where it came from. */
export type ContextSnippet = Snippet & { source: ContextSource };

/**
 * The context put before the text at the cursor of `file` (workspace-relative):
 * first the editor's snippets (`editor`, in their order: definitions, then
 * recent edits), then the best windows of other files for contextQuery(prefix)
 * that overlap none of them, each formatted by formatSnippet, taken in that
 * order while the text's tokens (`countTokens`) stay within `budgetTokens`; a
 * snippet that does not fit is left out whole. The text puts the first taken
 * nearest the cursor. Only files the index holds are used (the scan's rules:
 * an ignored, secret, binary or minified file never enters a prompt, whoever
 * found it), never `file` itself.
 */
export function retrievedContext(
  index: WorkspaceIndex, file: string, prefix: string, budgetTokens: number, countTokens: (text: string) => number, editor: EditorSnippet[] = [],
): { text: string; snippets: ContextSnippet[]; tokens: number } {
  if (budgetTokens <= 0) return { text: '', snippets: [], tokens: 0 };
  const comment = lineCommentFor(file);
  const overlaps = (a: { path: string; startLine: number; text: string }, b: { path: string; startLine: number; text: string }): boolean =>
    a.path === b.path && a.startLine < b.startLine + b.text.split('\n').length && b.startLine < a.startLine + a.text.split('\n').length;
  const candidates: ContextSnippet[] = [];
  for (const e of editor) {
    if (e.path === file || !index.has(e.path) || !e.text.trim() || candidates.some((c) => overlaps(c, e))) continue;
    candidates.push({ path: e.path, startLine: e.startLine, text: e.text, score: Infinity, source: e.source });
  }
  for (const s of index.find(contextQuery(prefix), CANDIDATES, file)) {
    if (!candidates.some((c) => overlaps(c, s))) candidates.push({ ...s, source: 'retrieved' });
  }
  return withinBudget(candidates, comment, budgetTokens, countTokens);
}

/**
 * Snippets taken in order while the context's whole text (as the prompt
 * tokenizes it) stays within `budgetTokens`, one that does not fit left out
 * whole; the text puts the first taken last, nearest the cursor.
 */
function withinBudget(candidates: ContextSnippet[], comment: string, budgetTokens: number, countTokens: (text: string) => number): { text: string; snippets: ContextSnippet[]; tokens: number } {
  const used: { snippet: ContextSnippet; part: string }[] = [];
  const textOf = (parts: typeof used): string => parts.map((u) => u.part).reverse().join('');
  let tokens = 0;
  for (const snippet of candidates) {
    const next = [...used, { snippet, part: formatSnippet(snippet, comment) }];
    const n = countTokens(textOf(next));
    if (n > budgetTokens) continue;
    used.push(next[next.length - 1]!);
    tokens = n;
  }
  return { text: textOf(used), snippets: used.map((u) => u.snippet), tokens };
}

/**
 * The context of a training sequence of `file` whose text is `text`: the
 * windows retrieved for it as for a completion whose cursor is at its end,
 * formatted the same way, and when even the best does not fit the budget
 * whole (training sequences are short), the best cut to the lines that fit.
 */
export function trainingContext(index: WorkspaceIndex, file: string, text: string, budgetTokens: number, countTokens: (text: string) => number): string {
  const found = index.find(contextQuery(text), CANDIDATES, file);
  const comment = lineCommentFor(file);
  const whole = withinBudget(found.map((s) => ({ ...s, source: 'retrieved' as const })), comment, budgetTokens, countTokens);
  if (whole.text || found.length === 0) return whole.text;
  const lines = found[0]!.text.split('\n');
  const first = (n: number): string => formatSnippet({ ...found[0]!, text: lines.slice(0, n).join('\n') }, comment);
  // The most first lines that fit (more lines, more tokens): a binary search, a few tokenizations rather than one per line.
  let lo = 0;
  let hi = lines.length - 1; // the whole window did not fit
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (countTokens(first(mid)) <= budgetTokens) lo = mid;
    else hi = mid - 1;
  }
  return lo > 0 ? first(lo) : '';
}
