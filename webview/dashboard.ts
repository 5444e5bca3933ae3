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

/** Round tick values covering [lo, hi]: about `count` of them. */
function ticks(lo: number, hi: number, count: number): number[] {
  const span = Math.max(hi - lo, 1e-9);
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(Number(t.toPrecision(6)));
  return out;
}

/**
 * The loss chart: train loss per step (line), held-out loss before training
 * (at step 0) and after it (at the last step) as points, axes with tick
 * values and titles, and a legend.
 */
function drawChart(canvas: HTMLCanvasElement, s: DashboardState): void {
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const r = devicePixelRatio;
  const w = (canvas.width = canvas.clientWidth * r);
  const h = (canvas.height = canvas.clientHeight * r);
  const css = getComputedStyle(document.body);
  const color = (name: string, fallback: string): string => css.getPropertyValue(name).trim() || fallback;
  const fg = color('--vscode-foreground', '#888');
  ctx.clearRect(0, 0, w, h);
  const pts = s.lossHistory;
  const held: { step: number; loss: number; label: string; color: string }[] = [];
  if (s.heldOutLossBefore !== undefined) held.push({ step: 0, loss: s.heldOutLossBefore, label: 'held-out, before', color: color('--vscode-charts-orange', '#d18616') });
  if (s.heldOutLossAfter !== undefined) held.push({ step: Math.max(s.step, s.totalSteps), loss: s.heldOutLossAfter, label: 'held-out, after', color: color('--vscode-charts-green', '#388a34') });
  if (pts.length === 0 && held.length === 0) return;
  const ys = [...pts.map((p) => p[1]), ...held.map((p) => p.loss)];
  const yt = ticks(Math.min(...ys), Math.max(...ys), 4);
  const lo = Math.min(yt[0]!, ...ys);
  const hi = Math.max(yt[yt.length - 1]!, ...ys);
  const maxX = Math.max(1, s.totalSteps, ...pts.map((p) => p[0]));
  const left = 48 * r;
  const bottom = 34 * r;
  const top = 22 * r;
  const right = 12 * r;
  const X = (x: number): number => left + (x / maxX) * (w - left - right);
  const Y = (y: number): number => h - bottom - ((y - lo) / Math.max(1e-9, hi - lo)) * (h - top - bottom);
  ctx.font = `${11 * r}px ${css.getPropertyValue('--vscode-font-family') || 'sans-serif'}`;
  ctx.fillStyle = fg;
  ctx.strokeStyle = fg;
  ctx.globalAlpha = 0.6;
  ctx.lineWidth = r;
  ctx.beginPath();
  ctx.moveTo(left, top);
  ctx.lineTo(left, h - bottom);
  ctx.lineTo(w - right, h - bottom);
  ctx.stroke();
  ctx.globalAlpha = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const t of yt) ctx.fillText(String(t), left - 4 * r, Y(t));
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (const t of ticks(0, maxX, 5)) ctx.fillText(String(t), X(t), h - bottom + 4 * r);
  ctx.fillText('step', (left + w - right) / 2, h - 14 * r);
  ctx.save();
  ctx.translate(12 * r, (top + h - bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText('loss (nats)', 0, -6 * r);
  ctx.restore();
  const blue = color('--vscode-charts-blue', '#3794ff');
  ctx.lineWidth = 2 * r;
  ctx.strokeStyle = blue;
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(X(x), Y(y)) : ctx.lineTo(X(x), Y(y))));
  ctx.stroke();
  for (const p of held) {
    ctx.fillStyle = p.color;
    ctx.beginPath();
    ctx.arc(X(p.step), Y(p.loss), 4 * r, 0, 2 * Math.PI);
    ctx.fill();
  }
  // Legend, top right.
  const entries: [string, string][] = [['train loss', blue], ...held.map((p): [string, string] => [p.label, p.color])];
  ctx.textAlign = 'left';
  ctx.textBaseline = 'middle';
  let x = w - right;
  for (const [label, c] of entries.reverse()) {
    x -= ctx.measureText(label).width + 22 * r;
    ctx.fillStyle = c;
    ctx.fillRect(x, top / 2 - 4 * r, 10 * r, 8 * r);
    ctx.fillStyle = fg;
    ctx.fillText(label, x + 14 * r, top / 2);
  }
}

function render(s: DashboardState): void {
  $('phase').textContent = s.phase;
  $('steps').textContent = `${s.step} / ${s.totalSteps}`;
  $('train-loss').textContent = fmt(s.trainLoss);
  $('tps').textContent = s.deviceTokensPerSecond.toFixed(0);
  $('bytes').textContent = `${(s.bytesSent / 2 ** 20).toFixed(1)} MiB`;
  $('rss').textContent = `${(s.deviceRssBytes / 2 ** 20).toFixed(0)} MiB`;
  $('eta-label').textContent = s.durationSeconds !== undefined ? 'Took' : 'ETA';
  $('eta').textContent = s.durationSeconds !== undefined ? `${Math.round(s.durationSeconds)} s` : s.etaSeconds === undefined ? '–' : `${Math.ceil(s.etaSeconds)} s`;
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
