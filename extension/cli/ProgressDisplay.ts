import { MultiBar, Presets, SingleBar } from 'cli-progress';
import type { JobProgress } from '../core/job/JobProgress';

/** Seconds between plain progress lines when stderr is not a terminal. */
const PLAIN_LINE_SECONDS = 10;

/** The numbers after the bar: step, loss, held-out losses, speed, bytes, ETA. */
export function progressDetails(p: JobProgress): string {
  const parts = [`${p.step}/${p.totalSteps}`];
  if (p.trainLoss !== undefined) parts.push(`loss ${p.trainLoss.toFixed(3)}`);
  if (p.heldOutLossBefore !== undefined) parts.push(`held-out ${p.heldOutLossBefore.toFixed(3)}${p.heldOutLossAfter !== undefined ? ` -> ${p.heldOutLossAfter.toFixed(3)}` : ''}`);
  if (p.deviceTokensPerSecond > 0) parts.push(`${p.deviceTokensPerSecond.toFixed(0)} tok/s`);
  parts.push(`${(p.bytesSent / 2 ** 20).toFixed(1)} MiB sent`);
  if (p.etaSeconds !== undefined && p.phase === 'training') parts.push(`ETA ${Math.ceil(p.etaSeconds)} s`);
  return parts.join('  ');
}

/**
 * A job's progress on stderr. On a terminal: one bar (cli-progress) that fits
 * the terminal's width, with every other message printed above it, never
 * into it. Elsewhere (a pipe, a CI log): a plain line when the phase changes
 * and at most every PLAIN_LINE_SECONDS, never the same line twice.
 */
export class ProgressDisplay {
  private readonly multi: MultiBar | undefined;
  private bar: SingleBar | undefined;
  private lastPlain = '';
  private lastPlainAt = 0;
  private lastPhase = '';

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {
    this.multi = out.isTTY
      ? new MultiBar({ stream: out, format: '{phase} [{bar}] {details}', barsize: 24, hideCursor: true, clearOnComplete: false, autopadding: true, linewrap: false, fps: 5 }, Presets.legacy)
      : undefined;
  }

  update(p: JobProgress): void {
    const payload = { phase: p.phase.padEnd(14), details: progressDetails(p) };
    if (this.multi) {
      const total = Math.max(1, p.totalSteps);
      this.bar ??= this.multi.create(total, 0, payload);
      this.bar.setTotal(total);
      this.bar.update(Math.min(p.step, total), payload);
      return;
    }
    const line = `${p.phase}  ${progressDetails(p)}`;
    const now = Date.now();
    const due = p.phase !== this.lastPhase || now - this.lastPlainAt >= PLAIN_LINE_SECONDS * 1000;
    if (due && line !== this.lastPlain) {
      this.out.write(`${line}\n`);
      this.lastPlain = line;
      this.lastPlainAt = now;
    }
    this.lastPhase = p.phase;
  }

  /** A message of its own line, above the bar. */
  message(text: string): void {
    if (this.multi) this.multi.log(`${text}\n`);
    else this.out.write(`${text}\n`);
  }

  /** Leaves the bar as it last stood and ends its line. */
  stop(): void {
    this.multi?.stop();
  }
}
