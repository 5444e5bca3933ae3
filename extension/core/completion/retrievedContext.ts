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

/**
 * The context put before the text at the cursor of `file` (workspace-relative):
 * the best windows of other files for contextQuery(prefix), each formatted
 * by formatSnippet, in score order while the text's tokens (`countTokens`)
 * stay within `budgetTokens`; a snippet that does not fit is left out whole.
 */
export function retrievedContext(
  index: WorkspaceIndex, file: string, prefix: string, budgetTokens: number, countTokens: (text: string) => number,
): { text: string; snippets: Snippet[]; tokens: number } {
  if (budgetTokens <= 0) return { text: '', snippets: [], tokens: 0 };
  const comment = lineCommentFor(file);
  const used: Snippet[] = [];
  let text = '';
  let tokens = 0;
  for (const s of index.find(contextQuery(prefix), CANDIDATES, file)) {
    const part = formatSnippet(s, comment);
    const next = countTokens(text + part); // the whole text, as the prompt tokenizes it
    if (next > budgetTokens) continue;
    text += part;
    tokens = next;
    used.push(s);
  }
  return { text, snippets: used, tokens };
}
