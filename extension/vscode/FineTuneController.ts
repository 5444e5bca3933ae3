import * as path from 'node:path';
import * as vscode from 'vscode';
import { JOB_DEFAULTS, JobSettings, ResolvedJobSettings, settingKeyOf } from '../../common/jobSettings';
import type { FineTuneJob, JobProgress } from '../core/job/FineTuneJob';
import { actionsFor } from '../core/text/errorActions';
import { MobiError } from '../core/MobiError';
import { statusText, updatePlanText } from '../core/text/statusText';
import { Comparison, DashboardState } from '../../webview/protocol';
import { confirmPrivacyLine, Exposure, ServerPlace, serverPlace, wireStatement } from '../core/text/privacyText';
import { DashboardPanel } from './DashboardPanel';
import { settingsLines } from '../core/text/settingsText';
import { readSettings } from './settings';

export const TOKEN_SECRET = 'mobillm.serverToken';
const LAST_JOB_KEY = 'mobillm.lastJobId';

/**
 * Runs fine-tuning jobs for the VS Code host: status bar, progress
 * notification, confirmation, error toasts. All logic of the job itself lives
 * in extension/core (FineTuneJob).
 */
export class FineTuneController implements vscode.Disposable {
  private job: FineTuneJob | undefined;
  private abort: AbortController | undefined;
  private progress: JobProgress | undefined;
  /** When the current or last job started and ended (ms). */
  private startedAt: number | undefined;
  private endedAt: number | undefined;
  private error: string | undefined;
  private config: Record<string, string> = {};
  /** Where the last (or current) job's server runs, in the job's mode: what the dashboard says crossed the wire. */
  private place: ServerPlace = 'embedded';
  /** The frames' bits and skipped layers (the job's own once it is known), for the audit's figure. */
  private exposure: Exposure = { bits: JOB_DEFAULTS.bits, skipLayers: JOB_DEFAULTS.skipLayers };
  comparison: Comparison | undefined;
  /** Called after a job stores a new adapter. */
  onAdapterStored: (() => void) | undefined;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly log: vscode.LogOutputChannel,
    private readonly status: vscode.StatusBarItem,
  ) {
    this.render();
  }

  get running(): boolean {
    return this.job !== undefined;
  }

  dashboardState(): DashboardState | undefined {
    const p = this.progress;
    const base = { wire: wireStatement(this.place, this.exposure), config: this.config, error: this.error, comparison: this.comparison };
    if (!p) return { phase: 'idle', step: 0, totalSteps: 0, deviceTokensPerSecond: 0, bytesSent: 0, deviceRssBytes: process.memoryUsage().rss, lossHistory: [], ...base };
    return {
      phase: p.phase, step: p.step, totalSteps: p.totalSteps, trainLoss: p.trainLoss, heldOutLossBefore: p.heldOutLossBefore, heldOutLossAfter: p.heldOutLossAfter,
      deviceTokensPerSecond: p.deviceTokensPerSecond, bytesSent: p.bytesSent, deviceRssBytes: p.deviceRssBytes,
      // The ETA only while training; once the job ended, how long it ran.
      etaSeconds: p.phase === 'training' ? p.etaSeconds : undefined,
      durationSeconds: this.endedAt !== undefined && this.startedAt !== undefined ? (this.endedAt - this.startedAt) / 1000 : undefined,
      lossHistory: p.lossHistory.slice(-2000), ...base,
    };
  }

  private render(): void {
    const { text, tooltip } = statusText(this.progress);
    this.status.text = text;
    this.status.tooltip = tooltip;
    this.status.show();
    DashboardPanel.refresh();
  }

  cancel(): void {
    if (!this.abort) {
      void vscode.window.showInformationMessage('MobiLLM: no fine-tuning is running.');
      return;
    }
    this.log.info('cancel requested');
    this.abort.abort();
  }

  async resume(): Promise<void> {
    const jobId = this.context.workspaceState.get<string>(LAST_JOB_KEY);
    if (!jobId) {
      void vscode.window.showInformationMessage('MobiLLM: there is no job to resume in this workspace; run "MobiLLM: Fine-tune on workspace".');
      return;
    }
    await this.start(jobId);
  }

  /**
   * Starts a fine-tune of the workspace (or resumes `resumeJobId`). `update`:
   * "MobiLLM: Update fine-tune", from the workspace's adapter and the files
   * changed since; `auto`: an automatic update (no dialog, progress in the
   * status bar only).
   */
  async start(resumeJobId?: string, how: { update?: boolean; auto?: boolean } = {}): Promise<void> {
    if (!vscode.workspace.isTrusted) {
      const pick = await vscode.window.showWarningMessage(
        'MobiLLM fine-tuning is disabled in Restricted Mode: it reads every source file of this workspace and runs a model on them. Trust the workspace to use it.',
        'Manage Workspace Trust',
      );
      if (pick) await vscode.commands.executeCommand('workbench.trust.manage');
      return;
    }
    if (this.job) {
      const pick = await vscode.window.showInformationMessage('MobiLLM: a fine-tuning job is already running.', 'Show Dashboard');
      if (pick) await vscode.commands.executeCommand('mobillm.showDashboard');
      return;
    }
    const folders = vscode.workspace.workspaceFolders ?? [];
    if (folders.length === 0) {
      void vscode.window.showErrorMessage('MobiLLM: open a folder first; fine-tuning learns from the files of a workspace folder.');
      return;
    }
    const folder = folders.length === 1 ? folders[0] : await vscode.window.showWorkspaceFolderPick({ placeHolder: 'Fine-tune on which folder?' });
    if (!folder) return;
    let settings: ReturnType<typeof readSettings>;
    try {
      settings = readSettings();
    } catch (err) {
      return this.report(MobiError.from(err), resumeJobId); // nothing started: a refused setting only
    }
    const { host: s, scan } = settings;
    // mobillm.labelPrivate is about a team server; the embedded one trains in the standard mode (the core's default without a server).
    const tuned = s.serverUrl ? settings.job : { ...settings.job, labelPrivate: undefined };
    this.setPrivacy(s.serverUrl, tuned);
    const token = s.serverUrl ? await this.context.secrets.get(TOKEN_SECRET) : undefined;
    const core = await import('../core/job/FineTuneJob.js');
    const { ensureDefaultModel } = await import('../core/model/defaultModel.js');
    const { defaultStoreDir } = await import('../core/store/defaultStoreDir.js');
    const storeDir = defaultStoreDir();
    this.progress = undefined;
    this.startedAt = Date.now();
    this.endedAt = undefined;
    this.error = undefined;
    this.comparison = undefined;
    /** Ends the scan/connect progress notification. */
    let earlyDone: (() => void) | undefined;
    try {
      if (s.serverUrl && !token) throw new MobiError('UNAUTHORIZED', 'A team server is configured but no token is set: run "MobiLLM: Set server token".');
      const model = s.model || ensureDefaultModel(storeDir);
      const where = { workspace: folder.name, model: s.model || 'built-in tiny model', server: s.serverUrl || 'embedded (this computer, 127.0.0.1)' };
      this.config = where;
      /** The job's own settings (a resumed job's, not today's): the dashboard's configuration and privacy line. */
      /** An update's plan, once known: what it trains on. */
      let update: string | undefined;
      const adopt = (settings: ResolvedJobSettings): void => {
        this.config = { ...where, ...settingsLines(settings), ...(update ? { update } : {}) };
        this.setPrivacy(s.serverUrl, settings);
      };
      this.abort = new AbortController();
      const abort = this.abort;
      const early = new Promise<void>((r) => (earlyDone = r));
      const location = how.auto ? vscode.ProgressLocation.Window : vscode.ProgressLocation.Notification;
      void vscode.window.withProgress({ location, title: how.update ? 'MobiLLM update' : 'MobiLLM', cancellable: !how.auto }, async (report, cancel) => {
        cancel.onCancellationRequested(() => abort.abort());
        let last = '';
        const tick = setInterval(() => {
          const phase = this.progress?.phase ?? 'scanning';
          if (phase !== last) report.report({ message: phase === 'scanning' ? 'Scanning the workspace…' : phase === 'connecting' ? 'Connecting to the server…' : `${phase.replace('-', ' ')}…` });
          last = phase;
        }, 200);
        await early;
        clearInterval(tick);
      });
      let lastPhase = '';
      this.job = new core.FineTuneJob({
        workspace: folder.uri.fsPath, model, server: s.serverUrl ? { url: s.serverUrl, token: token! } : undefined,
        // A resumed job keeps the settings it was created with; a new one takes today's.
        ...(resumeJobId ? {} : tuned),
        ...(how.update && !resumeJobId ? { update: true } : {}),
        storeDir, resumeJobId, signal: abort.signal, scan,
        describeOption: (k) => settingKeyOf(k) ?? k,
        log: (line) => this.log.info(line),
        confirm: async (report, settings) => {
          const { describeSkipped } = await import('../core/workspace/scanWorkspace.js');
          earlyDone?.();
          adopt(settings);
          if (how.auto) return true; // asked for once, by mobillm.autoUpdate
          const files = `${report.files.length} files (${(report.includedBytes / 1024).toFixed(1)} KB)`;
          const used = how.update ? `${files} are compared with the adapter's: the new code of those that changed, and a share of the others, is trained on.` : `${files} will be used.`;
          const detail = [used, confirmPrivacyLine(this.place, this.exposure), ...describeSkipped(report)].join('\n');
          const verb = how.update ? 'Update' : 'Fine-tune';
          const ok = await vscode.window.showInformationMessage(how.update ? `Update the fine-tune of ${folder.name} from the files changed since?` : `Fine-tune on ${folder.name}?`, { modal: true, detail }, verb);
          return ok === verb;
        },
        onUpdatePlan: (u) => {
          update = updatePlanText(u);
          this.log.info(`update: ${update}`);
          if ('none' in u) void vscode.window.showInformationMessage(`MobiLLM: update: ${update}.`);
          this.config = { ...this.config, update };
        },
        onProgress: (p) => {
          if (p.settings) adopt(p.settings);
          this.progress = p;
          if (p.jobId) void this.context.workspaceState.update(LAST_JOB_KEY, p.jobId);
          if (p.phase !== lastPhase && p.phase !== 'scanning' && p.phase !== 'connecting') earlyDone?.();
          lastPhase = p.phase;
          this.render();
        },
      });
      const r = await this.job.run();
      earlyDone?.();
      this.log.info(`done: ${r.steps} steps, held-out loss ${r.heldOutLossBefore.toFixed(4)} -> ${r.heldOutLossAfter.toFixed(4)}`);
      this.onAdapterStored?.();
      void vscode.window
        .showInformationMessage(`MobiLLM: fine-tuned. Held-out perplexity ${Math.exp(r.heldOutLossBefore).toFixed(1)} → ${Math.exp(r.heldOutLossAfter).toFixed(1)}.`, 'Show Dashboard')
        .then((pick) => pick && vscode.commands.executeCommand('mobillm.showDashboard'));
    } catch (err) {
      const e = MobiError.from(err);
      if (e.code === 'UP_TO_DATE') {
        this.progress = undefined;
        this.log.info(e.message);
        if (!how.auto) void vscode.window.showInformationMessage(`MobiLLM: ${e.message}`);
        return;
      }
      const prev = this.progress as JobProgress | undefined;
      this.progress = prev ? { ...prev, phase: e.code === 'CANCELLED' ? 'cancelled' : 'failed' } : undefined;
      this.error = e.code === 'CANCELLED' ? undefined : `${e.code}: ${e.message}`;
      this.report(e, resumeJobId);
    } finally {
      earlyDone?.();
      this.endedAt = Date.now();
      this.job = undefined;
      this.abort = undefined;
      this.render();
    }
  }

  /** Logs an error and, unless it is a cancellation, shows it with the actions that help. */
  /** Where the job trains and what its frames carry: the privacy sentences follow these (today's settings, then the job's own). */
  private setPrivacy(serverUrl: string, settings: JobSettings): void {
    this.place = serverPlace(serverUrl, settings.labelPrivate);
    this.exposure = { bits: settings.bits ?? JOB_DEFAULTS.bits, skipLayers: settings.skipLayers ?? JOB_DEFAULTS.skipLayers };
  }

  private report(e: MobiError, resumeJobId?: string): void {
    this.log.error(`error[${e.code}]: ${e.message}`);
    if (e.code !== 'CANCELLED') void this.showError(e, resumeJobId);
  }

  private async showError(e: MobiError, resumeJobId?: string): Promise<void> {
    const pick = await vscode.window.showErrorMessage(`MobiLLM: ${e.message}`, ...actionsFor(e.code));
    switch (pick) {
      case 'Open Settings':
        await vscode.commands.executeCommand('workbench.action.openSettings', e.setting ?? 'mobillm');
        break;
      case 'Set Token':
        await vscode.commands.executeCommand('mobillm.setToken');
        break;
      case 'Show Logs':
        this.log.show();
        break;
      case 'Retry':
        await this.start(resumeJobId);
        break;
    }
  }

  workspaceOf(doc: vscode.Uri): string | undefined {
    const f = vscode.workspace.getWorkspaceFolder(doc);
    return f ? path.resolve(f.uri.fsPath) : undefined;
  }

  dispose(): void {
    this.abort?.abort();
  }
}
