// The dashboard webview (bundled by esbuild into out/webview/dashboard.js).
import '@vscode-elements/elements/dist/vscode-button/index.js';
import '@vscode-elements/elements/dist/vscode-badge/index.js';
import '@vscode-elements/elements/dist/vscode-divider/index.js';
import { DashboardState, parseHostMessage, WebviewMessage } from './protocol';

declare function acquireVsCodeApi(): { postMessage(m: WebviewMessage): void; getState(): unknown; setState(s: unknown): void };
const vscode = acquireVsCodeApi();

const $ = (id: string): HTMLElement => document.getElementById(id)!;
const fmt = (x: number | undefined, digits = 3): string => (x === undefined ? '–' : x.toFixed(digits));
const ppl = (x: number | undefined): string => (x === undefined ? '–' : Math.exp(x).toFixed(2));

function drawChart(canvas: HTMLCanvasElement, s: DashboardState): void {
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const h = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const css = getComputedStyle(document.body);
  ctx.clearRect(0, 0, w, h);
  const pts = s.lossHistory;
  const refs = [s.heldOutLossBefore, s.heldOutLossAfter].filter((x): x is number => x !== undefined);
  if (pts.length === 0 && refs.length === 0) return;
  const ys = [...pts.map((p) => p[1]), ...refs];
  const lo = Math.min(...ys);
  const hi = Math.max(...ys);
  const maxX = Math.max(1, s.totalSteps, ...pts.map((p) => p[0]));
  const X = (x: number): number => 8 + (x / maxX) * (w - 16);
  const Y = (y: number): number => h - 8 - ((y - lo) / Math.max(1e-9, hi - lo)) * (h - 16);
  ctx.lineWidth = 2 * devicePixelRatio;
  ctx.strokeStyle = css.getPropertyValue('--vscode-charts-blue') || '#3794ff';
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(X(x), Y(y)) : ctx.lineTo(X(x), Y(y))));
  ctx.stroke();
  ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
  const held: [number | undefined, string][] = [[s.heldOutLossBefore, '--vscode-charts-orange'], [s.heldOutLossAfter, '--vscode-charts-green']];
  for (const [y, color] of held) {
    if (y === undefined) continue;
    ctx.strokeStyle = css.getPropertyValue(color) || '#888';
    ctx.beginPath();
    ctx.moveTo(X(0), Y(y));
    ctx.lineTo(X(maxX), Y(y));
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

function render(s: DashboardState): void {
  $('phase').textContent = s.phase;
  $('steps').textContent = `${s.step} / ${s.totalSteps}`;
  $('train-loss').textContent = fmt(s.trainLoss);
  $('tps').textContent = s.deviceTokensPerSecond.toFixed(0);
  $('bytes').textContent = `${(s.bytesSent / 2 ** 20).toFixed(1)} MiB`;
  $('rss').textContent = `${(s.deviceRssBytes / 2 ** 20).toFixed(0)} MiB`;
  $('eta').textContent = s.etaSeconds === undefined ? '–' : `${Math.ceil(s.etaSeconds)} s`;
  $('before').textContent = `${fmt(s.heldOutLossBefore)} (perplexity ${ppl(s.heldOutLossBefore)})`;
  $('after').textContent = `${fmt(s.heldOutLossAfter)} (perplexity ${ppl(s.heldOutLossAfter)})`;
  $('result').textContent = s.heldOutLossAfter !== undefined && s.heldOutLossBefore !== undefined ? `Held-out perplexity ${ppl(s.heldOutLossBefore)} → ${ppl(s.heldOutLossAfter)}` : '';
  $('wire').textContent = s.wire;
  $('error').textContent = s.error ?? '';
  const cfg = $('config');
  cfg.replaceChildren(...Object.entries(s.config).map(([k, v]) => {
    const row = document.createElement('tr');
    const a = document.createElement('td');
    const b = document.createElement('td');
    a.textContent = k;
    b.textContent = v;
    row.append(a, b);
    return row;
  }));
  const cmp = $('comparison');
  if (s.comparison) {
    const c = s.comparison;
    const head = document.createElement('p');
    head.textContent = `Held-out perplexity: base ${c.basePerplexity.toFixed(2)}, fine-tuned ${c.tunedPerplexity.toFixed(2)}`;
    const rows = c.samples.map((x) => {
      const tr = document.createElement('tr');
      for (const text of [x.prompt, x.base, x.tuned]) {
        const td = document.createElement('td');
        const pre = document.createElement('pre');
        pre.textContent = text;
        td.append(pre);
        tr.append(td);
      }
      return tr;
    });
    const table = document.createElement('table');
    const hdr = document.createElement('tr');
    for (const t of ['prompt (end)', 'base', 'fine-tuned']) {
      const th = document.createElement('th');
      th.textContent = t;
      hdr.append(th);
    }
    table.append(hdr, ...rows);
    cmp.replaceChildren(head, table);
  } else cmp.replaceChildren();
  ($('cancel') as HTMLElement & { disabled: boolean }).disabled = !['scanning', 'connecting', 'uploading-head', 'evaluating', 'training'].includes(s.phase);
  drawChart($('chart') as HTMLCanvasElement, s);
}

window.addEventListener('message', (e: MessageEvent) => {
  const m = parseHostMessage(e.data);
  if (!m) return; // anything else is ignored
  vscode.setState(m.state);
  render(m.state);
});
$('cancel').addEventListener('click', () => vscode.postMessage({ type: 'cancel' }));
$('logs').addEventListener('click', () => vscode.postMessage({ type: 'showLogs' }));
const saved = parseHostMessage({ type: 'state', state: vscode.getState() });
if (saved) render(saved.state);
vscode.postMessage({ type: 'ready' });
