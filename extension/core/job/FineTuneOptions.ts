import { JOB_DEFAULTS, JOB_SETTING_NAMES, JOB_SETTINGS, JobSettingName, JobSettings, ResolvedJobSettings, settingsProblem } from '../../../common/jobSettings';
import { settingRulesProblem } from '../../../common/jobConfigProblem';
import { defaultStoreDir } from '../store/defaultStoreDir';
import { MobiError } from '../MobiError';
import type { ScanOptions, ScanReport } from '../workspace/scanWorkspace';
import type { JobProgress } from './JobProgress';
import type { JobRecord } from './JobRecordStore';

/**
 * Options of a fine-tuning job. Every field has a default a newcomer can keep;
 * the job's settings (epochs, bits, side network, ...) are the rows of
 * common/jobSettings.ts, with their ranges, defaults and documentation.
 */
export interface FineTuneOptions extends JobSettings {
  /** Folder of source code to learn from. */
  workspace: string;
  /** GGUF path or hf: URI of the backbone. */
  model: string;
  /** Team server; undefined starts an embedded server in this process on 127.0.0.1. */
  server?: { url: string; token: string };
  /** Workspace scan filters and limits. Default: none beyond the scan's own. */
  scan?: ScanOptions;
  /** Device store (adapters, job records, embedded server data). Default ~/.mobillm. */
  storeDir?: string;
  /** CPU threads for the backbone. Default cores - 1. */
  threads?: number;
  /** Give up reconnecting after this long. Default 120 s. */
  reconnectTimeoutMs?: number;
  /** Continue this job (its record is in the store). Default: a new job. */
  resumeJobId?: string;
  /** Called with the scan report and the job's settings (a resumed job's own) before any work; return false to stop. Default: go ahead. */
  confirm?: (report: ScanReport, settings: ResolvedJobSettings) => Promise<boolean> | boolean;
  /** Called at every phase change and acknowledged step. Default: nothing. */
  onProgress?: (p: JobProgress) => void;
  /** Sees every frame this device sends, byte for byte (auditing what crosses the wire). Default: nothing. */
  onFrameSent?: (frame: Uint8Array) => void;
  /** An update (`update`): what it trains on, or why it is a full job. Default: nothing. */
  onUpdatePlan?: (plan: UpdateSummary) => void;
  /** Writes one line per event (numbers only, never source text). Default: nothing. */
  log?: (line: string) => void;
  /** Cancels the job. Default: never. */
  signal?: AbortSignal;
  /** How the host names an option in messages (the CLI: its flag). Default: the option's name. */
  describeOption?: (name: JobSettingName) => string;
}

/** What an update trains on (files counted), since its adapter's date; or why it is a full job. */
export type UpdateSummary = { changed: number; replayed: number; unchanged: number; deleted: number; since: string } | { none: string };

/**
 * Checks every setting that is given against its row, once, before any work:
 * BAD_ARGUMENT naming the option (as the host names it) and what it accepts.
 */
export function checkFineTuneOptions(o: FineTuneOptions): void {
  const nameOf = (k: JobSettingName): string => o.describeOption?.(k) ?? k;
  const problem = settingsProblem(JOB_SETTINGS, o, nameOf) ?? settingRulesProblem(o, nameOf);
  if (problem) throw new MobiError('BAD_ARGUMENT', problem.message);
}

/** The job settings among a job's options (what its record keeps). */
export function tunedSettings(o: FineTuneOptions): JobSettings {
  return Object.fromEntries(JOB_SETTING_NAMES.filter((k) => o[k] !== undefined).map((k) => [k, o[k]])) as JobSettings;
}

/** Options that are not job settings, with their defaults. */
const HOST_DEFAULTS = { reconnectTimeoutMs: 120_000 } as const;

export type ResolvedFineTuneOptions = FineTuneOptions & typeof JOB_DEFAULTS & Required<Pick<FineTuneOptions, 'scan' | 'storeDir' | 'reconnectTimeoutMs' | 'labelPrivate'>>;

/**
 * Label-private unless the user says otherwise, wherever a server outside this
 * process receives the frames: a team server would otherwise receive every
 * training token's id (the code itself). The embedded server keeps the
 * standard mode: nothing leaves this computer.
 */
export function defaultLabelPrivate(o: Pick<FineTuneOptions, 'server'>): boolean {
  return o.server !== undefined;
}

/** Checks the options and applies the defaults (the job settings' rows, then the host's) to every one left undefined. */
export function resolveFineTuneOptions(options: FineTuneOptions): ResolvedFineTuneOptions {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as FineTuneOptions;
  const labelPrivate = given.labelPrivate ?? defaultLabelPrivate(given);
  const resolved = { ...JOB_DEFAULTS, ...HOST_DEFAULTS, scan: {}, storeDir: defaultStoreDir(), ...given, labelPrivate };
  checkFineTuneOptions(resolved); // each given value against its row, and the rules between settings with the defaults applied
  return resolved;
}

/**
 * A resumed job keeps every setting it was created with: its record's
 * settings replace the defaults in `o`, and a setting `given` now that
 * differs is a BAD_ARGUMENT (dropping it resumes the job as it was).
 */
export function adoptRecord(given: FineTuneOptions, o: ResolvedFineTuneOptions, rec: Pick<JobRecord, 'jobId' | 'settings'>): void {
  for (const k of JOB_SETTING_NAMES) {
    const mine = given[k];
    const theirs = rec.settings?.[k];
    if (mine !== undefined && theirs !== undefined && mine !== theirs) {
      const name = given.describeOption?.(k) ?? k;
      throw new MobiError('BAD_ARGUMENT', `${name} is ${String(theirs)} for job ${rec.jobId}; a resumed job keeps the settings it was created with (leave ${name} out to resume it).`);
    }
  }
  // A record without the mode is from before label-private was the default with a team server: the standard mode.
  Object.assign(o, { labelPrivate: false }, rec.settings ?? {});
}
