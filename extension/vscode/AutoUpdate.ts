import * as vscode from 'vscode';
import type { AdapterBehind } from '../core/job/updatePlan';
import { AutoUpdateMode, AutoUpdateState, autoUpdateBlocked, autoUpdateDue } from '../core/job/autoUpdate';
import { MobiError } from '../core/MobiError';
import type { FineTuneController } from './FineTuneController';
import { readSettings } from './settings';

/** How often an automatic update is considered, milliseconds. */
const TICK_MS = 60_000;
/** After a save or a job, how long before the staleness is measured again, milliseconds. */
const REFRESH_DELAY_MS = 3_000;
const LAST_AUTO_KEY = 'mobillm.lastAutoUpdateAt';

/**
 * Keeps the workspace's adapter current: measures how far behind it is
 * (files changed or deleted since it was made, and its age) after saves,
 * file operations and jobs, for the status bar; and with
 * `mobillm.autoUpdate` starts "MobiLLM: Update fine-tune" by itself when
 * the workspace has been quiet (autoUpdate.ts decides).
 */
export class AutoUpdate implements vscode.Disposable {
  private lastEditAt = Date.now();
  private refreshing: NodeJS.Timeout | undefined;
  private readonly tick: NodeJS.Timeout;
  /** How far behind the first folder's adapter is, once measured. */
  behind: AdapterBehind | undefined;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
    private readonly controller: FineTuneController,
    private readonly completions: { lastRequestAt: number; inFlight: number },
    /** Called when the staleness was measured again. */
    private readonly changed: () => void,
  ) {
    this.tick = setInterval(() => void this.consider(), TICK_MS);
    this.refreshSoon();
  }

  listeners(): vscode.Disposable[] {
    const edited = (uri: vscode.Uri): void => {
      if (uri.scheme !== 'file' || !vscode.workspace.getWorkspaceFolder(uri)) return;
      this.lastEditAt = Date.now();
    };
    return [
      vscode.workspace.onDidChangeTextDocument((ev) => ev.contentChanges.length > 0 && edited(ev.document.uri)),
      vscode.workspace.onDidSaveTextDocument((doc) => (edited(doc.uri), this.refreshSoon())),
      vscode.workspace.onDidDeleteFiles(() => this.refreshSoon()),
      vscode.workspace.onDidRenameFiles(() => this.refreshSoon()),
      vscode.workspace.onDidCreateFiles(() => this.refreshSoon()),
    ];
  }

  /** Measures the staleness again in a moment (saves come in bursts). */
  refreshSoon(): void {
    clearTimeout(this.refreshing);
    this.refreshing = setTimeout(() => void this.refresh(), REFRESH_DELAY_MS);
  }

  /** Scans the first folder (the fine-tune's rules) and compares its files with its adapter's. */
  async refresh(): Promise<AdapterBehind | undefined> {
    const folder = vscode.workspace.workspaceFolders?.[0];
    if (!folder || !vscode.workspace.isTrusted || this.controller.running) return this.behind;
    try {
      const { scan, host } = readSettings();
      const [{ scanWorkspaceAsync }, { fileDigests, adapterBehind }, { AdapterStore }, { defaultStoreDir }, { ensureDefaultModel }, { modelFingerprint }] = await Promise.all([
        import('../core/workspace/scanWorkspace.js'), import('../core/job/updatePlan.js'), import('../core/store/AdapterStore.js'),
        import('../core/store/defaultStoreDir.js'), import('../core/model/defaultModel.js'), import('../core/model/modelFingerprint.js'),
      ]);
      const store = defaultStoreDir();
      const model = host.model || ensureDefaultModel(store);
      if (model.startsWith('hf:')) return this.behind; // a model not yet resolved to a file: no adapter can be found by its fingerprint
      const found = new AdapterStore(store).find(folder.uri.fsPath, await modelFingerprint(model));
      this.behind = found ? adapterBehind(found.meta, fileDigests((await scanWorkspaceAsync(folder.uri.fsPath, scan)).files)) : undefined;
    } catch (err) {
      this.log.warn(`could not measure how far behind the adapter is: error[${MobiError.from(err).code}]`);
    }
    this.changed();
    return this.behind;
  }

  /** Starts an automatic update when it is due. */
  private async consider(): Promise<void> {
    let mode: AutoUpdateMode;
    try {
      mode = readSettings().host.autoUpdate as AutoUpdateMode;
    } catch {
      return; // a refused setting: the controller reports it when a job is asked for
    }
    const live = (): Omit<AutoUpdateState, 'behind'> => ({
      mode, now: Date.now(), lastEditAt: this.lastEditAt, lastCompletionAt: this.completions.lastRequestAt, completionInFlight: this.completions.inFlight > 0,
      jobRunning: this.controller.running, lastAutoAt: this.context.workspaceState.get<number>(LAST_AUTO_KEY),
    });
    // The workspace is scanned only when nothing else holds the update back, and the rest is asked again after the scan.
    if (autoUpdateBlocked(live()) !== undefined) return;
    const behind = await this.refresh();
    if (autoUpdateDue({ ...live(), behind }) !== true) return;
    this.log.info(`automatic update (${mode}): ${behind!.changed} files changed`);
    await this.context.workspaceState.update(LAST_AUTO_KEY, Date.now());
    await this.controller.start(undefined, { update: true, auto: true });
    this.refreshSoon();
  }

  dispose(): void {
    clearInterval(this.tick);
    clearTimeout(this.refreshing);
  }
}
