/**
 * A small line chart of held-out loss against wall time, as SVG (no
 * dependencies), and as PNG through Chromium when it is installed (the e2e
 * set-up installs Debian's Chromium).
 */
import * as fs from 'node:fs';
import { CHROMIUM, CHROMIUM_ARGS } from '../../harness/chromium';

export interface PlotSeries {
  label: string;
  /** [seconds, loss] points in time order. */
  points: [number, number][];
  color: string;
  dashed?: boolean;
}

export interface PlotOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** A horizontal reference line (e.g. the common loss target). */
  hLine?: { y: number; label: string };
}

const W = 860;
const H = 520;
const M = { left: 70, right: 250, top: 48, bottom: 56 };

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** "Nice" tick positions covering [lo, hi]. */
function ticks(lo: number, hi: number, n: number): number[] {
  const span = hi - lo || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

export function lossPlotSvg(series: PlotSeries[], options: PlotOptions): string {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat(options.hLine ? [options.hLine.y] : []);
  const xMax = Math.max(...xs, 1);
  const yLo = Math.min(...ys);
  const yHi = Math.max(...ys);
  const pad = (yHi - yLo) * 0.05 || 0.1;
  const [y0, y1] = [yLo - pad, yHi + pad];
  const px = (x: number): number => M.left + (x / xMax) * (W - M.left - M.right);
  const py = (y: number): number => M.top + (1 - (y - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="13">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2 - M.right / 2}" y="26" text-anchor="middle" font-size="16">${escapeXml(options.title)}</text>`);
  for (const t of ticks(0, xMax, 8)) {
    parts.push(`<line x1="${px(t)}" y1="${M.top}" x2="${px(t)}" y2="${H - M.bottom}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${px(t)}" y="${H - M.bottom + 18}" text-anchor="middle">${t}</text>`);
  }
  for (const t of ticks(y0, y1, 6)) {
    parts.push(`<line x1="${M.left}" y1="${py(t)}" x2="${W - M.right}" y2="${py(t)}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${M.left - 8}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  parts.push(`<rect x="${M.left}" y="${M.top}" width="${W - M.left - M.right}" height="${H - M.top - M.bottom}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${(M.left + W - M.right) / 2}" y="${H - 14}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`);
  parts.push(`<text transform="translate(18 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(options.yLabel)}</text>`);
  if (options.hLine) {
    const y = py(options.hLine.y);
    parts.push(`<line x1="${M.left}" y1="${y}" x2="${W - M.right}" y2="${y}" stroke="#555" stroke-dasharray="2 4"/>`);
    parts.push(`<text x="${W - M.right + 8}" y="${y + 4}" fill="#555">${escapeXml(options.hLine.label)}</text>`);
  }
  series.forEach((s, i) => {
    const d = s.points.map((p, j) => `${j === 0 ? 'M' : 'L'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ');
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.2"${s.dashed ? ' stroke-dasharray="7 4"' : ''}/>`);
    for (const p of s.points) parts.push(`<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3.2" fill="${s.color}"/>`);
    const ly = M.top + 14 + i * 22;
    parts.push(`<line x1="${W - M.right + 12}" y1="${ly + 40}" x2="${W - M.right + 40}" y2="${ly + 40}" stroke="${s.color}" stroke-width="2.2"${s.dashed ? ' stroke-dasharray="7 4"' : ''}/>`);
    parts.push(`<text x="${W - M.right + 46}" y="${ly + 44}">${escapeXml(s.label)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** Renders an SVG to PNG in headless Chromium; returns a reason instead when Chromium is not installed. */
export async function svgToPng(svg: string, pngPath: string): Promise<string | undefined> {
  if (!fs.existsSync(CHROMIUM)) return `${CHROMIUM} is missing (apt-get install -y chromium, or npm run test:e2e once): only the SVG was written`;
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, chromiumSandbox: false, args: CHROMIUM_ARGS,
  });
  try {
    const page = await browser.newPage({ viewport: { width: W, height: H } });
    await page.setContent(`<html><body style="margin:0">${svg}</body></html>`);
    await page.locator('svg').screenshot({ path: pngPath });
    return undefined;
  } finally {
    await browser.close();
  }
}
