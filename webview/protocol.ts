/**
 * Messages between the extension host and the dashboard webview: one typed
 * map per direction, validated on receipt by both sides (no `vscode` import:
 * this file is bundled into the webview too).
 */

export interface DashboardState {
  phase: string;
  step: number;
  totalSteps: number;
  trainLoss?: number;
  heldOutLossBefore?: number;
  heldOutLossAfter?: number;
  deviceTokensPerSecond: number;
  bytesSent: number;
  deviceRssBytes: number;
  etaSeconds?: number;
  /** Seconds the job ran, once it ended. */
  durationSeconds?: number;
  /** [step, loss] points. */
  lossHistory: [number, number][];
  /** The job's configuration, as label -> value. */
  config: Record<string, string>;
  /** Plain statement of what crossed the wire. */
  wire: string;
  error?: string;
  /** "MobiLLM: Compare base and fine-tuned": held-out perplexities and sample completions. */
  comparison?: Comparison;
}

export interface Comparison {
  basePerplexity: number;
  tunedPerplexity: number;
  samples: { prompt: string; base: string; tuned: string }[];
}

function isComparison(v: unknown): v is Comparison {
  if (typeof v !== 'object' || v === null) return false;
  const c = v as Record<string, unknown>;
  return isNum(c.basePerplexity) && isNum(c.tunedPerplexity) && Array.isArray(c.samples) && c.samples.length <= 20 &&
    c.samples.every((x) => typeof x === 'object' && x !== null && ['prompt', 'base', 'tuned'].every((k) => typeof (x as Record<string, unknown>)[k] === 'string'));
}

/** Host -> webview. */
export type HostMessage = { type: 'state'; state: DashboardState };
/** Webview -> host. */
export type WebviewMessage = { type: 'ready' } | { type: 'cancel' } | { type: 'showLogs' };

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const optNum = (v: unknown): boolean => v === undefined || isNum(v);

export function isDashboardState(v: unknown): v is DashboardState {
  if (typeof v !== 'object' || v === null) return false;
  const s = v as Record<string, unknown>;
  return (
    typeof s.phase === 'string' && s.phase.length < 40 &&
    isNum(s.step) && isNum(s.totalSteps) && isNum(s.deviceTokensPerSecond) && isNum(s.bytesSent) && isNum(s.deviceRssBytes) &&
    optNum(s.trainLoss) && optNum(s.heldOutLossBefore) && optNum(s.heldOutLossAfter) && optNum(s.etaSeconds) && optNum(s.durationSeconds) &&
    Array.isArray(s.lossHistory) && s.lossHistory.length <= 100_000 &&
    s.lossHistory.every((p) => Array.isArray(p) && p.length === 2 && isNum(p[0]) && isNum(p[1])) &&
    typeof s.config === 'object' && s.config !== null && Object.values(s.config).every((x) => typeof x === 'string') &&
    typeof s.wire === 'string' && (s.error === undefined || typeof s.error === 'string') &&
    (s.comparison === undefined || isComparison(s.comparison))
  );
}

export function parseHostMessage(v: unknown): HostMessage | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const m = v as Record<string, unknown>;
  return m.type === 'state' && isDashboardState(m.state) ? (m as HostMessage) : undefined;
}

export function parseWebviewMessage(v: unknown): WebviewMessage | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const t = (v as Record<string, unknown>).type;
  return t === 'ready' || t === 'cancel' || t === 'showLogs' ? { type: t } : undefined;
}
