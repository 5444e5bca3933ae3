import type { JobProgress } from '../job/FineTuneJob';
import type { AdapterBehind } from '../job/updatePlan';
import type { UpdateSummary } from '../job/FineTuneOptions';

/** What the status bar shows for a job's progress (VS Code codicons in $(...)). */
export function statusText(p: JobProgress | undefined): { text: string; tooltip: string } {
  if (!p) return { text: '$(sparkle) MobiLLM', tooltip: 'MobiLLM: fine-tune on this workspace (click for the dashboard)' };
  const ppl = (x: number | undefined): string => (x === undefined ? '?' : Math.exp(x) < 1e4 ? Math.exp(x).toFixed(1) : Math.exp(x).toExponential(1));
  switch (p.phase) {
    case 'done':
      return { text: `$(check) MobiLLM: done, perplexity ${ppl(p.heldOutLossBefore)} → ${ppl(p.heldOutLossAfter)}`, tooltip: `Fine-tuned in ${p.step} steps. Held-out loss ${p.heldOutLossBefore?.toFixed(3)} → ${p.heldOutLossAfter?.toFixed(3)}. Click for the dashboard.` };
    case 'failed':
      return { text: '$(error) MobiLLM: failed', tooltip: 'Fine-tuning failed; see the notification or "MobiLLM: Show logs".' };
    case 'cancelled':
      return { text: '$(circle-slash) MobiLLM: cancelled', tooltip: 'Cancelled; "MobiLLM: Resume fine-tuning" continues from the last checkpoint.' };
    case 'training': {
      const parts = [`$(sync~spin) MobiLLM ${p.step}/${p.totalSteps}`];
      if (p.trainLoss !== undefined) parts.push(`loss ${p.trainLoss.toFixed(2)}`);
      if (p.etaSeconds !== undefined) parts.push(`ETA ${formatDuration(p.etaSeconds)}`);
      if (p.serverQueueAhead) parts.push(`server busy (${p.serverQueueAhead} ahead)`);
      const busy = p.serverQueueAhead ? ' The team server is training other jobs too: this job\'s steps wait their turn (it shares its workers fairly between users).' : '';
      return { text: parts.join(' · '), tooltip: `Fine-tuning: click for the dashboard; "MobiLLM: Cancel fine-tuning" stops it.${busy}` };
    }
    default:
      return { text: `$(sync~spin) MobiLLM: ${p.phase.replace('-', ' ')}`, tooltip: 'Fine-tuning is starting; click for the dashboard.' };
  }
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** How far behind the workspace's adapter is, for the status bar: "3 files, 2 days behind", "1 file behind" (made today) or "up to date". */
export function behindText(b: AdapterBehind): string {
  const files = b.changed + b.deleted;
  if (files === 0) return 'up to date';
  const n = `${files} file${files === 1 ? '' : 's'}`;
  return b.days === 0 ? `${n} behind` : `${n}, ${b.days} day${b.days === 1 ? '' : 's'} behind`;
}

/** What an update trains on, for the CLI, the log and the dashboard: "3 changed files, 12 of 60 unchanged ones replayed, 1 deleted (from the adapter of 2026-12-06 17:20)". */
export function updatePlanText(u: UpdateSummary): string {
  if ('none' in u) return `${u.none}; this is a full fine-tune`;
  return `${u.changed} changed files, ${u.replayed} of ${u.unchanged} unchanged ones replayed, ${u.deleted} deleted (from the adapter of ${u.since.slice(0, 16).replace('T', ' ')})`;
}
