import * as vscode from 'vscode';
import type { CompletionEngine } from '../core/completion/CompletionEngine';
import { DashboardPanel } from './DashboardPanel';
import { FineTuneController, TOKEN_SECRET } from './FineTuneController';
import { InlineCompletions } from './InlineCompletions';
import { AutoUpdate } from './AutoUpdate';
import { nativeAddonLocation } from '../native/NativeAddon';

/** The completions of this activation; deactivate() disposes their engine (awaited, so the model is freed before exit). */
let completionsInUse: InlineCompletions | undefined;

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

  const completions = new InlineCompletions(log, modelStatus, () => controller.running);
  completionsInUse = completions;
  const updateModelStatus = (): Promise<void> => completions.updateStatus();
  const completionEngine = (): Promise<CompletionEngine> => completions.completionEngine();
  const autoUpdate = new AutoUpdate(context, log, controller, completions, () => {
    completions.behind = autoUpdate.behind;
    void updateModelStatus();
  });
  controller.onAdapterStored = () => {
    void updateModelStatus();
    autoUpdate.refreshSoon();
  };

  context.subscriptions.push(
    log, status, modelStatus, controller, autoUpdate, ...autoUpdate.listeners(),
    vscode.commands.registerCommand('mobillm.finetune', () => controller.start()),
    vscode.commands.registerCommand('mobillm.update', () => controller.start(undefined, { update: true })),
    vscode.commands.registerCommand('mobillm.cancel', () => controller.cancel()),
    vscode.commands.registerCommand('mobillm.resume', () => controller.resume()),
    vscode.commands.registerCommand('mobillm.showDashboard', showDashboard),
    vscode.commands.registerCommand('mobillm.showLogs', () => log.show()),
    vscode.commands.registerCommand('mobillm.showCompletionContext', () => completions.showContext()),
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
    vscode.languages.registerInlineCompletionItemProvider({ pattern: '**' }, completions),
    ...completions.fileListeners(),
    vscode.workspace.registerTextDocumentContentProvider(InlineCompletions.CONTEXT_SCHEME, completions),
    vscode.window.onDidChangeActiveTextEditor(() => void updateModelStatus()),
    vscode.workspace.onDidChangeConfiguration((ev) => ev.affectsConfiguration('mobillm') && void updateModelStatus()),
  );
  void updateModelStatus();
  checkNativeAddon(log);
}

/**
 * A package installed where no native build fits (another platform's
 * package, or a missing library): one notification naming the platform and
 * the supported targets, at activation, instead of a failure at first use.
 */
function checkNativeAddon(log: vscode.LogOutputChannel): void {
  try {
    nativeAddonLocation();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    log.error(`error[NATIVE_ADDON_MISSING] ${message}`);
    void vscode.window.showErrorMessage(`MobiLLM cannot run on this computer: ${message}`);
  }
}

export async function deactivate(): Promise<void> {
  await completionsInUse?.dispose();
  completionsInUse = undefined;
}
