import * as vscode from 'vscode';
import type { CompletionDetails, CompletionEngine } from '../core/completion/CompletionEngine';
import { EditorContext } from './EditorContext';
import { MobiError } from '../core/MobiError';
import { SCAN_SETTINGS } from '../../common/jobSettings';
import { readHostSettings } from './settings';
import type { AdapterBehind } from '../core/job/updatePlan';
import { behindText } from '../core/text/statusText';

/** Debounce before an inline completion is computed, milliseconds. */
const COMPLETION_DEBOUNCE_MS = 300;

/**
 * Inline completions from the model on this computer, with the workspace's
 * adapter when one exists, and the status item that says which. Owns the
 * completion engine (loaded on first use, replaced when the model setting
 * changes) and disposes it.
 */
export class InlineCompletions implements vscode.InlineCompletionItemProvider, vscode.TextDocumentContentProvider, vscode.Disposable {
  /** The read-only document of the last completion's context (MobiLLM: Show Completion Context). */
  static readonly CONTEXT_SCHEME = 'mobillm-context';
  private static readonly CONTEXT_URI = vscode.Uri.from({ scheme: InlineCompletions.CONTEXT_SCHEME, path: '/Last completion context' });
  private readonly contextChanged = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.contextChanged.event;
  private engine: CompletionEngine | undefined;
  private engineModel = '';
  /** Failure codes already logged this session (each kind once). */
  private readonly failures = new Set<string>();
  /** Definitions near the cursor and recent edits, for the prompt's context. */
  private readonly editorContext = new EditorContext();
  /** The last completion shown and what went into its prompt (MobiLLM: Show Completion Context). */
  private last: { file: string; details: CompletionDetails } | undefined;
  /** When a completion was last asked for, and how many are being computed: an automatic update waits for quiet. */
  lastRequestAt = 0;
  inFlight = 0;
  /** How far behind the workspace's adapter is (AutoUpdate measures it), for the status item. */
  behind: AdapterBehind | undefined;

  constructor(
    private readonly log: vscode.LogOutputChannel,
    private readonly status: vscode.StatusBarItem,
    /** Completions pause while a fine-tune runs (both use the CPU). */
    private readonly busy: () => boolean,
  ) {}

  /** The engine for today's model setting. */
  async completionEngine(): Promise<CompletionEngine> {
    const { CompletionEngine } = await import('../core/completion/CompletionEngine.js');
    const { defaultStoreDir } = await import('../core/store/defaultStoreDir.js');
    const { ensureDefaultModel } = await import('../core/model/defaultModel.js');
    const store = defaultStoreDir();
    const model = readHostSettings().model || ensureDefaultModel(store);
    if (!this.engine || this.engineModel !== model) {
      await this.engine?.dispose();
      this.engine = new CompletionEngine(model, store);
      this.engineModel = model;
    }
    return this.engine;
  }

  /** Host settings, or undefined (logged once) when one is refused: completions stay off until it is fixed. */
  private settings(): ReturnType<typeof readHostSettings> | undefined {
    try {
      return readHostSettings();
    } catch (err) {
      this.logOnce(MobiError.from(err));
      return undefined;
    }
  }

  async updateStatus(): Promise<void> {
    const folder = vscode.window.activeTextEditor ? vscode.workspace.getWorkspaceFolder(vscode.window.activeTextEditor.document.uri) : vscode.workspace.workspaceFolders?.[0];
    if (!this.settings()?.inlineCompletions || !folder) {
      this.status.hide();
      return;
    }
    const e = await this.completionEngine();
    const adapter = await e.adapterFor(folder.uri.fsPath).catch(() => undefined);
    const mode = await e.mode().catch(() => undefined);
    const behind = adapter && this.behind ? this.behind : undefined;
    const stale = behind !== undefined && behind.changed + behind.deleted > 0;
    this.status.text = adapter ? `$(sparkle) MobiLLM: fine-tuned${behind ? ` · ${behindText(behind)}` : ''}` : '$(circle-outline) MobiLLM: base';
    this.status.tooltip = `${adapter ? 'Inline completions use this workspace\'s fine-tuned side network' : 'No adapter for this workspace yet: completions use the base model'}${mode ? `; prompts: ${mode}` : ''}${
      stale ? `. ${behind.changed} files changed and ${behind.deleted} deleted since the adapter was made: click to update it ("MobiLLM: Update fine-tune").` : ''}`;
    this.status.command = stale ? 'mobillm.update' : undefined;
    this.status.show();
  }

  async provideInlineCompletionItems(document: vscode.TextDocument, position: vscode.Position, _ctx: vscode.InlineCompletionContext, token: vscode.CancellationToken): Promise<vscode.InlineCompletionItem[]> {
    if (!this.settings()?.inlineCompletions || !vscode.workspace.isTrusted || this.busy()) return [];
    this.lastRequestAt = Date.now();
    this.inFlight++;
    try {
      return await this.complete(document, position, token);
    } finally {
      this.inFlight--;
    }
  }

  private async complete(document: vscode.TextDocument, position: vscode.Position, token: vscode.CancellationToken): Promise<vscode.InlineCompletionItem[]> {
    await new Promise((r) => setTimeout(r, COMPLETION_DEBOUNCE_MS));
    const s = this.settings();
    if (token.isCancellationRequested || !s) return [];
    const abort = new AbortController();
    token.onCancellationRequested(() => abort.abort());
    const folder = vscode.workspace.getWorkspaceFolder(document.uri);
    const prefix = document.getText(new vscode.Range(new vscode.Position(0, 0), position));
    const end = document.lineAt(document.lineCount - 1).range.end;
    const suffix = s.completionSuffixChars > 0 ? document.getText(new vscode.Range(position, end)) : undefined;
    try {
      const file = folder ? vscode.workspace.asRelativePath(document.uri, false) : undefined;
      const editorSnippets = file !== undefined && s.completionContextTokens > 0 ? await this.editorContext.snippets(document, position) : [];
      if (token.isCancellationRequested) return [];
      const details = await (await this.completionEngine()).completion(folder?.uri.fsPath, prefix, {
        signal: abort.signal, suffix, prefixChars: s.completionPrefixChars, suffixChars: s.completionSuffixChars, file, contextTokens: s.completionContextTokens, editorSnippets,
      });
      const text = details.text;
      if (file !== undefined) this.last = { file, details };
      this.log.info(`inline completion: ${text.length} characters, context from ${details.contextSnippets.length} snippet(s)`);
      return text.trim() ? [new vscode.InlineCompletionItem(text, new vscode.Range(position, position))] : [];
    } catch (err) {
      // No completion, never a blocked editor.
      this.logOnce(MobiError.from(err));
      return [];
    }
  }

  /** Keeps the engine's search index of each workspace current: saves, deletions and renames. */
  fileListeners(): vscode.Disposable[] {
    const changed = (uri: vscode.Uri, text: string | undefined, from?: vscode.Uri): void => {
      const folder = vscode.workspace.getWorkspaceFolder(uri);
      if (!folder || !this.engine || uri.scheme !== 'file') return;
      const rel = (u: vscode.Uri): string => vscode.workspace.asRelativePath(u, false);
      this.engine.fileChanged(folder.uri.fsPath, rel(uri), text, from && rel(from)).catch((err: unknown) => this.logOnce(MobiError.from(err)));
    };
    return [
      vscode.workspace.onDidSaveTextDocument((doc) => changed(doc.uri, doc.getText())),
      vscode.workspace.onDidDeleteFiles((ev) => ev.files.forEach((uri) => changed(uri, undefined))),
      vscode.workspace.onDidRenameFiles((ev) => {
        for (const { oldUri, newUri } of ev.files) {
          void renamedText(newUri).then((text) => changed(newUri, text, oldUri));
        }
      }),
    ];
  }

  /** Opens the read-only document of the last completion and the context its prompt carried. */
  async showContext(): Promise<void> {
    if (!this.last) {
      void vscode.window.showInformationMessage('MobiLLM: no completion yet in this session. Type in a file of the workspace first.');
      return;
    }
    this.contextChanged.fire(InlineCompletions.CONTEXT_URI);
    const doc = await vscode.workspace.openTextDocument(InlineCompletions.CONTEXT_URI);
    await vscode.window.showTextDocument(doc, { preview: true, viewColumn: vscode.ViewColumn.Beside });
  }

  /** The last completion, and the context its prompt carried with where each snippet came from. */
  provideTextDocumentContent(): string {
    if (!this.last) return 'MobiLLM: no completion yet in this session.';
    const { file, details: d } = this.last;
    return [
      `MobiLLM: the last inline completion, in ${file}`,
      '',
      `Completion: ${JSON.stringify(d.text)}`,
      `Prompt: ${d.promptTokens} tokens, ${d.promptTokensEvaluated} evaluated (the rest reused from the previous prompt)`,
      '',
      d.contextSnippets.length ? 'Context before the text at the cursor, the nearest first:' : 'No context from other files (none matched, the budget is 0, or the index is still being built).',
      ...d.contextSnippets.map((c) => `  ${c.source}: ${c.path}:${c.startLine + 1}`),
      '',
      'The context as the model reads it (completions run on this computer: no server sees it):',
      '',
      d.context,
    ].join('\n');
  }

  /** Each kind of failure is logged once per session; later ones of that kind are silent. */
  private logOnce(e: MobiError): void {
    const kind = e.setting ?? e.code;
    if (this.failures.has(kind)) return;
    this.failures.add(kind);
    this.log.warn(`completions failed: error[${e.code}]${e.setting ? ` ${e.message}` : ''} (logged once; later ones of this kind are silent)`);
  }

  async dispose(): Promise<void> {
    this.editorContext.dispose();
    this.contextChanged.dispose();
    const e = this.engine;
    this.engine = undefined;
    await e?.dispose();
  }
}

/** The text of a file renamed to `uri`: its open document's, else the file's when it is a plain file small enough to index (links are never followed). */
async function renamedText(uri: vscode.Uri): Promise<string | undefined> {
  const doc = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString());
  if (doc) return doc.getText();
  try {
    const st = await vscode.workspace.fs.stat(uri);
    if (st.type !== vscode.FileType.File || st.size > SCAN_SETTINGS.maxFileBytes.default) return undefined;
    return Buffer.from(await vscode.workspace.fs.readFile(uri)).toString('utf8');
  } catch {
    return undefined;
  }
}
