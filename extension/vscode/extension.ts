import * as vscode from 'vscode';
import type { CompletionEngine } from '../core/CompletionEngine';
import { DashboardPanel } from './DashboardPanel';
import { FineTuneController, TOKEN_SECRET } from './FineTuneController';
import { readSettings } from './settings';

/** Debounce before an inline completion is computed, milliseconds. */
const COMPLETION_DEBOUNCE_MS = 300;

let engine: CompletionEngine | undefined;
let engineModel = '';

/** The thin VS Code host: commands, status bar, dashboard, inline completions. Logic lives in extension/core. */
export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('MobiLLM', { log: true });
  const status = vscode.window.createStatusBarItem('mobillm.status', vscode.StatusBarAlignment.Left, 100);
  status.name = 'MobiLLM';
  status.command = 'mobillm.showDashboard';
  const modelStatus = vscode.window.createStatusBarItem('mobillm.model', vscode.StatusBarAlignment.Right, 100);
  modelStatus.name = 'MobiLLM completions';
  const controller = new FineTuneController(context, log, status);
  const showDashboard = (): void => {
    DashboardPanel.show(context.extensionUri, () => controller.dashboardState(), { cancel: () => controller.cancel(), showLogs: () => log.show() });
  };

  const completionEngine = async (): Promise<CompletionEngine> => {
    const { CompletionEngine } = await import('../core/CompletionEngine.js');
    const { defaultStoreDir } = await import('../core/defaultStoreDir.js');
    const { ensureDefaultModel } = await import('../core/defaultModel.js');
    const store = defaultStoreDir();
    const model = readSettings().model || ensureDefaultModel(store);
    if (!engine || engineModel !== model) {
      await engine?.dispose();
      engine = new CompletionEngine(model, store);
      engineModel = model;
    }
    return engine!;
  };
  const updateModelStatus = async (): Promise<void> => {
    const folder = vscode.window.activeTextEditor ? vscode.workspace.getWorkspaceFolder(vscode.window.activeTextEditor.document.uri) : vscode.workspace.workspaceFolders?.[0];
    if (!readSettings().inlineCompletions || !folder) {
      modelStatus.hide();
      return;
    }
    const e = await completionEngine();
    const adapter = await e.adapterFor(folder.uri.fsPath).catch(() => undefined);
    const mode = await e.mode().catch(() => undefined);
    modelStatus.text = adapter ? '$(sparkle) MobiLLM: fine-tuned' : '$(circle-outline) MobiLLM: base';
    modelStatus.tooltip = `${adapter ? 'Inline completions use this workspace\'s fine-tuned side network' : 'No adapter for this workspace yet: completions use the base model'}${mode ? `; prompts: ${mode}` : ''}`;
    modelStatus.show();
  };
  controller.onAdapterStored = () => void updateModelStatus();

  const completionFailures = new Set<string>();
  const provider: vscode.InlineCompletionItemProvider = {
    async provideInlineCompletionItems(document, position, _ctx, token) {
      if (!readSettings().inlineCompletions || !vscode.workspace.isTrusted || controller.running) return [];
      await new Promise((r) => setTimeout(r, COMPLETION_DEBOUNCE_MS));
      if (token.isCancellationRequested) return [];
      const abort = new AbortController();
      token.onCancellationRequested(() => abort.abort());
      const folder = vscode.workspace.getWorkspaceFolder(document.uri);
      const s = readSettings();
      const prefix = document.getText(new vscode.Range(new vscode.Position(0, 0), position));
      const end = document.lineAt(document.lineCount - 1).range.end;
      const suffix = s.completionSuffixChars > 0 ? document.getText(new vscode.Range(position, end)) : undefined;
      try {
        const text = await (await completionEngine()).complete(folder?.uri.fsPath, prefix, { signal: abort.signal, suffix, prefixChars: s.completionPrefixChars, suffixChars: s.completionSuffixChars });
        log.info(`inline completion: ${text.length} characters`);
        return text.trim() ? [new vscode.InlineCompletionItem(text, new vscode.Range(position, position))] : [];
      } catch (err) {
        // No completion, never a blocked editor; each kind of failure is logged once per session.
        const code = (err as { code?: string }).code ?? 'error';
        if (!completionFailures.has(code)) {
          completionFailures.add(code);
          log.warn(`completions failed: error[${code}] (logged once; later ones of this kind are silent)`);
        }
        return [];
      }
    },
  };

  context.subscriptions.push(
    log, status, modelStatus, controller,
    vscode.commands.registerCommand('mobillm.finetune', () => controller.start()),
    vscode.commands.registerCommand('mobillm.cancel', () => controller.cancel()),
    vscode.commands.registerCommand('mobillm.resume', () => controller.resume()),
    vscode.commands.registerCommand('mobillm.showDashboard', showDashboard),
    vscode.commands.registerCommand('mobillm.showLogs', () => log.show()),
    vscode.commands.registerCommand('mobillm.setToken', async () => {
      const token = await vscode.window.showInputBox({ title: 'MobiLLM server token', prompt: 'The token your team admin created with "mobillm-server users add". Stored in VS Code\'s secret storage.', password: true, ignoreFocusOut: true });
      if (token === undefined) return;
      if (token.trim() === '') await context.secrets.delete(TOKEN_SECRET);
      else await context.secrets.store(TOKEN_SECRET, token.trim());
      void vscode.window.showInformationMessage(token.trim() ? 'MobiLLM: server token saved.' : 'MobiLLM: server token removed.');
    }),
    vscode.commands.registerCommand('mobillm.selectModel', async () => {
      const pick = await vscode.window.showQuickPick(['Choose a .gguf file…', 'Enter a Hugging Face URI…', 'Use the built-in tiny model'], { title: 'MobiLLM backbone model' });
      let value: string | undefined;
      if (pick === 'Choose a .gguf file…') {
        const files = await vscode.window.showOpenDialog({ canSelectMany: false, filters: { 'GGUF models': ['gguf'] } });
        value = files?.[0]?.fsPath;
      } else if (pick === 'Enter a Hugging Face URI…') {
        value = await vscode.window.showInputBox({ prompt: 'e.g. hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:Q8_0', validateInput: (v) => (/^hf:[^/\s]+\/[^\s]+$/.test(v) ? undefined : 'Use hf:owner/repo[:quant]') });
      } else if (pick) value = '';
      if (value === undefined) return;
      await vscode.workspace.getConfiguration('mobillm').update('model', value, vscode.ConfigurationTarget.Global);
      void updateModelStatus();
    }),
    vscode.commands.registerCommand('mobillm.compare', async () => {
      const folder = vscode.workspace.workspaceFolders?.[0];
      if (!folder || !vscode.workspace.isTrusted) return void vscode.window.showWarningMessage('MobiLLM: open a trusted workspace folder first.');
      const e = await completionEngine();
      if (!(await e.adapterFor(folder.uri.fsPath))) return void vscode.window.showInformationMessage('MobiLLM: no fine-tuned adapter for this workspace yet; run "MobiLLM: Fine-tune on workspace" first.');
      const doc = vscode.window.activeTextEditor?.document;
      const text = doc?.getText() ?? '';
      const prompts = [0.3, 0.6, 0.9].map((f) => text.slice(0, Math.floor(text.length * f))).filter((p) => p.length > 0);
      await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'MobiLLM: comparing base and fine-tuned…' }, async () => {
        controller.comparison = await e.compare(folder.uri.fsPath, prompts.length ? prompts : ['function ']);
      });
      showDashboard();
    }),
    vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, provider),
    vscode.window.onDidChangeActiveTextEditor(() => void updateModelStatus()),
    vscode.workspace.onDidChangeConfiguration((ev) => ev.affectsConfiguration('mobillm') && void updateModelStatus()),
  );
  void updateModelStatus();
}

export async function deactivate(): Promise<void> {
  await engine?.dispose();
  engine = undefined;
}
