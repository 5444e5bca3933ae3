import * as vscode from 'vscode';
import type { EditorSnippet } from '../core/completion/retrievedContext';
import { IDENTIFIERS, STOP_WORDS } from '../core/workspace/codeTerms';

/** Identifiers near the cursor whose definitions are asked for: the last ones typed, at most this many. */
const DEFINITION_SYMBOLS = 6;
/** Lines of a definition put in the context, from its first line. */
const DEFINITION_LINES = 12;
/** The language server gets this long for all of a completion's definitions; what comes later is left out. */
const DEFINITION_TIMEOUT_MS = 250;
/** A definition found is reused this long for the same symbol in the same file (keystrokes do not ask again). */
const DEFINITION_CACHE_MS = 30_000;
const EMPTY_CACHE_MS = 3_000;
/** Edited places remembered, the latest first; nearby edits of a file are one place. */
const RECENT_EDITS = 16;
const RECENT_EDITS_USED = 3;
/** Lines around an edited place put in the context. */
const EDIT_LINES_BEFORE = 4;
const EDIT_LINES_AFTER = 8;

/**
 * What the editor knows that the workspace index does not: the definitions of
 * the symbols near the cursor, from the language server of the file's
 * language, and the places of other files edited lately. Both give snippets of
 * files in the same workspace folder, which the completion engine filters by
 * the scan's rules before they enter a prompt. Nothing here is sent anywhere.
 */
export class EditorContext implements vscode.Disposable {
  private readonly edits: { uri: string; line: number }[] = [];
  private readonly definitions = new Map<string, { at: number; snippets: Promise<EditorSnippet[]> }>();
  private readonly listener: vscode.Disposable;

  constructor() {
    this.listener = vscode.workspace.onDidChangeTextDocument((ev) => {
      if (ev.document.uri.scheme !== 'file' || ev.contentChanges.length === 0) return;
      this.edited(ev.document.uri.toString(), ev.contentChanges[0]!.range.start.line);
    });
  }

  private edited(uri: string, line: number): void {
    const i = this.edits.findIndex((e) => e.uri === uri && Math.abs(e.line - line) <= EDIT_LINES_AFTER);
    if (i >= 0) this.edits.splice(i, 1);
    this.edits.unshift({ uri, line });
    this.edits.length = Math.min(this.edits.length, RECENT_EDITS);
  }

  /** The editor's snippets for a completion at `position` of `document`: definitions first, then recent edits of other files. */
  async snippets(document: vscode.TextDocument, position: vscode.Position): Promise<EditorSnippet[]> {
    const folder = vscode.workspace.getWorkspaceFolder(document.uri);
    if (!folder) return [];
    const rel = (uri: vscode.Uri): string | undefined =>
      vscode.workspace.getWorkspaceFolder(uri)?.uri.toString() === folder.uri.toString() ? vscode.workspace.asRelativePath(uri, false) : undefined;
    const definitions = await this.definitionsNear(document, position, rel);
    const recent: EditorSnippet[] = [];
    for (const e of this.edits) {
      if (recent.length >= RECENT_EDITS_USED) break;
      if (e.uri === document.uri.toString()) continue;
      const doc = vscode.workspace.textDocuments.find((d) => d.uri.toString() === e.uri);
      const p = doc && rel(doc.uri);
      if (!doc || p === undefined) continue;
      const start = Math.max(0, e.line - EDIT_LINES_BEFORE);
      const end = Math.min(doc.lineCount, e.line + EDIT_LINES_AFTER);
      recent.push({ path: p, startLine: start, text: linesOf(doc, start, end), source: 'recent edit' });
    }
    return [...definitions, ...recent];
  }

  /** Definitions, in other files, of the last identifiers before the cursor (this line and the two before it). */
  private async definitionsNear(document: vscode.TextDocument, position: vscode.Position, rel: (uri: vscode.Uri) => string | undefined): Promise<EditorSnippet[]> {
    const symbols: { name: string; at: vscode.Position }[] = [];
    for (let line = position.line; line >= Math.max(0, position.line - 2) && symbols.length < DEFINITION_SYMBOLS; line--) {
      const text = document.lineAt(line).text.slice(0, line === position.line ? position.character : undefined);
      const found = [...text.matchAll(IDENTIFIERS)].reverse();
      for (const m of found) {
        // The word being typed is not a symbol yet.
        if (line === position.line && m.index! + m[0].length === text.length) continue;
        if (m[0].length < 3 || STOP_WORDS.has(m[0]) || symbols.some((s) => s.name === m[0])) continue;
        symbols.push({ name: m[0], at: new vscode.Position(line, m.index!) });
        if (symbols.length >= DEFINITION_SYMBOLS) break;
      }
    }
    const now = Date.now();
    const lookups = symbols.map(({ name, at }) => {
      const key = `${document.uri.toString()}\n${name}`;
      const cached = this.definitions.get(key);
      if (cached && now - cached.at < DEFINITION_CACHE_MS) return cached.snippets;
      const entry = { at: now, snippets: definitionSnippets(document, at, rel) };
      this.definitions.set(key, entry);
      // None found (or a language server still starting): asked again a few seconds later, not after the whole cache time.
      entry.snippets.then((found) => found.length === 0 && (entry.at = now - DEFINITION_CACHE_MS + EMPTY_CACHE_MS), () => this.definitions.delete(key));
      return entry.snippets;
    });
    const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), DEFINITION_TIMEOUT_MS));
    const out: EditorSnippet[] = [];
    for (const lookup of lookups) {
      const found = await Promise.race([lookup.catch(() => []), timeout]);
      if (found === 'timeout') break;
      for (const s of found) if (!out.some((o) => o.path === s.path && o.startLine === s.startLine)) out.push(s);
    }
    if (this.definitions.size > 256) this.definitions.clear();
    return out;
  }

  dispose(): void {
    this.listener.dispose();
  }
}

/** The definitions of the symbol at `at`, as snippets of other files of the workspace folder. */
async function definitionSnippets(document: vscode.TextDocument, at: vscode.Position, rel: (uri: vscode.Uri) => string | undefined): Promise<EditorSnippet[]> {
  const found = await vscode.commands.executeCommand<(vscode.Location | vscode.LocationLink)[] | undefined>('vscode.executeDefinitionProvider', document.uri, at);
  const out: EditorSnippet[] = [];
  for (const loc of found ?? []) {
    const uri = 'targetUri' in loc ? loc.targetUri : loc.uri;
    const range = 'targetUri' in loc ? loc.targetRange : loc.range;
    const p = rel(uri);
    if (p === undefined || uri.toString() === document.uri.toString()) continue;
    const doc = await vscode.workspace.openTextDocument(uri);
    const end = Math.min(doc.lineCount, range.start.line + DEFINITION_LINES, range.end.line + 1);
    out.push({ path: p, startLine: range.start.line, text: linesOf(doc, range.start.line, end), source: 'definition' });
  }
  return out;
}

function linesOf(doc: vscode.TextDocument, start: number, end: number): string {
  return doc.getText(new vscode.Range(start, 0, end, 0));
}
