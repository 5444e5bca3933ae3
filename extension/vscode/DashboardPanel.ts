import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { DashboardState, HostMessage, parseWebviewMessage } from '../../webview/protocol';

/** The dashboard webview: strict CSP with a nonce, scripts only from out/webview. One at a time. */
export class DashboardPanel implements vscode.Disposable {
  private static current: DashboardPanel | undefined;
  private readonly disposables: vscode.Disposable[] = [];
  private disposed = false;

  private constructor(
    private readonly panel: vscode.WebviewPanel,
    private readonly root: vscode.Uri,
    private readonly getState: () => DashboardState | undefined,
    handlers: { cancel: () => void; showLogs: () => void },
  ) {
    panel.webview.html = this.html();
    this.disposables.push(
      panel.onDidDispose(() => this.dispose()),
      panel.webview.onDidReceiveMessage((raw) => {
        const m = parseWebviewMessage(raw);
        if (!m) return;
        if (m.type === 'ready') this.update();
        else if (m.type === 'cancel') handlers.cancel();
        else handlers.showLogs();
      }),
    );
  }

  static show(extensionUri: vscode.Uri, getState: () => DashboardState | undefined, handlers: { cancel: () => void; showLogs: () => void }): DashboardPanel {
    if (DashboardPanel.current) {
      DashboardPanel.current.panel.reveal();
      DashboardPanel.current.update();
      return DashboardPanel.current;
    }
    const root = vscode.Uri.joinPath(extensionUri, 'out', 'webview');
    const panel = vscode.window.createWebviewPanel('mobillm.dashboard', 'MobiLLM Dashboard', vscode.ViewColumn.Active, {
      enableScripts: true,
      localResourceRoots: [root],
    });
    DashboardPanel.current = new DashboardPanel(panel, root, getState, handlers);
    return DashboardPanel.current;
  }

  /** Pushes the latest state when a panel is open (no-op otherwise). */
  static refresh(): void {
    DashboardPanel.current?.update();
  }

  private update(): void {
    const state = this.getState();
    if (state) void this.panel.webview.postMessage({ type: 'state', state } satisfies HostMessage);
  }

  private html(): string {
    const nonce = randomBytes(16).toString('base64');
    const script = this.panel.webview.asWebviewUri(vscode.Uri.joinPath(this.root, 'dashboard.js'));
    const csp = `default-src 'none'; img-src ${this.panel.webview.cspSource}; style-src ${this.panel.webview.cspSource} 'nonce-${nonce}'; script-src 'nonce-${nonce}'; font-src ${this.panel.webview.cspSource};`;
    return `<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<style nonce="${nonce}">
  body { font-family: var(--vscode-font-family); color: var(--vscode-foreground); padding: 0 16px; }
  h1 { font-size: 1.3em; } .grid { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
  .label { color: var(--vscode-descriptionForeground); } #chart { width: 100%; height: 220px; border: 1px solid var(--vscode-panel-border); }
  #result { font-size: 1.2em; font-weight: bold; margin: 8px 0; } #error { color: var(--vscode-errorForeground); }
  td { padding: 2px 12px 2px 0; } .wire { color: var(--vscode-descriptionForeground); max-width: 60em; }
</style></head>
<body>
  <h1>MobiLLM fine-tuning <vscode-badge id="phase">idle</vscode-badge></h1>
  <div id="result"></div><div id="error"></div>
  <canvas id="chart" aria-label="loss per step: train loss (line), held-out loss before and after (points)"></canvas>
  <div class="grid">
    <span class="label">Steps</span><span id="steps">–</span>
    <span class="label">Train loss</span><span id="train-loss">–</span>
    <span class="label">Held-out loss before</span><span id="before">–</span>
    <span class="label">Held-out loss after</span><span id="after">–</span>
    <span class="label">Device tokens/s</span><span id="tps">–</span>
    <span class="label">Bytes sent</span><span id="bytes">–</span>
    <span class="label">Device memory (RSS)</span><span id="rss">–</span>
    <span class="label" id="eta-label">ETA</span><span id="eta">–</span>
  </div>
  <p><vscode-button id="cancel" secondary>Cancel fine-tuning</vscode-button> <vscode-button id="logs" secondary>Show logs</vscode-button></p>
  <vscode-divider></vscode-divider>
  <div id="comparison"></div>
  <h2>Configuration</h2><table><tbody id="config"></tbody></table>
  <h2>What crossed the wire</h2><p class="wire" id="wire"></p>
  <script nonce="${nonce}" src="${script.toString()}"></script>
</body></html>`;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (DashboardPanel.current === this) DashboardPanel.current = undefined;
    for (const d of this.disposables.splice(0)) d.dispose();
    this.panel.dispose();
  }
}
