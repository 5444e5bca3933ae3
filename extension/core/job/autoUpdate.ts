import type { AdapterBehind } from './updatePlan';

/** How the workspace's adapter is kept current (the `mobillm.autoUpdate` setting). */
export type AutoUpdateMode = 'off' | 'idle' | 'daily';

/** No edit, save or completion for this long before an automatic update starts, milliseconds. */
export const QUIET_MS = 5 * 60_000;
/** At most one automatic update a day in the `daily` mode, milliseconds. */
export const DAY_MS = 86_400_000;

/** What decides whether an automatic update starts now. */
export interface AutoUpdateState {
  mode: AutoUpdateMode;
  now: number;
  /** The last edit or save of a workspace file, and the last completion asked for. */
  lastEditAt: number;
  lastCompletionAt: number;
  completionInFlight: boolean;
  jobRunning: boolean;
  /** How far behind the adapter is (undefined: no adapter that lists its files). */
  behind: AdapterBehind | undefined;
  /** When the last automatic update started, if ever. */
  lastAutoAt: number | undefined;
}

/**
 * Why an automatic update must wait whatever the adapter's staleness, or
 * undefined: never while a job runs or a completion is being served; only
 * after a quiet period without edits and completions; in the `daily` mode at
 * most once a day. (Checked before the workspace is scanned for changes.)
 */
export function autoUpdateBlocked(s: Omit<AutoUpdateState, 'behind'>): string | undefined {
  if (s.mode === 'off') return 'automatic updates are off';
  if (s.jobRunning) return 'a fine-tune is running';
  if (s.completionInFlight) return 'a completion is being served';
  if (s.now - Math.max(s.lastEditAt, s.lastCompletionAt) < QUIET_MS) return 'not quiet long enough';
  if (s.mode === 'daily' && s.lastAutoAt !== undefined && s.now - s.lastAutoAt < DAY_MS) return 'updated automatically less than a day ago';
  return undefined;
}

/** Whether an automatic update starts now (nothing blocks it, and files have moved away from the adapter), or why not. */
export function autoUpdateDue(s: AutoUpdateState): true | string {
  const blocked = autoUpdateBlocked(s);
  if (blocked) return blocked;
  if (!s.behind) return 'no adapter to update';
  if (s.behind.changed === 0) return 'the adapter is up to date';
  return true;
}
