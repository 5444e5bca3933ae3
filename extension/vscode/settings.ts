import * as vscode from 'vscode';
import { Defaults, HOST_SETTINGS, JOB_SETTINGS, JobSettings, SCAN_SETTINGS, SettingRow, settingsProblem, SettingValue } from '../../common/jobSettings';
import { MobiError } from '../core/MobiError';

type Table = Record<string, SettingRow>;
/** The values of a table's rows that are VS Code settings. */
type KeyedValues<T extends Table> = { -readonly [K in keyof T as T[K] extends { key: string } ? K : never]: SettingValue<T[K]> };

/**
 * The rows of `table` that are VS Code settings (common/jobSettings.ts; package.json
 * declares the same keys): the value set, or the row's default. A value the row
 * refuses is BAD_ARGUMENT naming the setting, never coerced to a default.
 */
function readTable<T extends Table>(table: T): KeyedValues<T> {
  const c = vscode.workspace.getConfiguration('mobillm');
  const values: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(table)) if (row.key) values[name] = c.get(row.key) ?? (row.kind === 'boolean' ? row.hostDefault : undefined) ?? row.default;
  const problem = settingsProblem(table, values, (n) => `mobillm.${table[n]!.key ?? n}`);
  if (problem) throw new MobiError('BAD_ARGUMENT', `The setting ${problem.message} Fix it in Settings; nothing was started.`, { setting: problem.name });
  return values as KeyedValues<T>;
}

/** The job settings VS Code exposes, read when a job starts (the others keep their defaults). */
function readJobSettings(): JobSettings {
  return readTable(JOB_SETTINGS);
}

/** The workspace scan's filters and limits. */
function readScanSettings(): KeyedValues<typeof SCAN_SETTINGS> {
  return readTable(SCAN_SETTINGS);
}

/** Where jobs run, the model, and inline completions. */
export function readHostSettings(): Defaults<typeof HOST_SETTINGS> {
  const s = readTable(HOST_SETTINGS);
  return { ...s, serverUrl: s.serverUrl.trim(), model: s.model.trim() };
}

/** Every MobiLLM setting a fine-tune reads, checked: BAD_ARGUMENT naming the first refused one. */
export function readSettings(): { host: Defaults<typeof HOST_SETTINGS>; job: JobSettings; scan: KeyedValues<typeof SCAN_SETTINGS> } {
  return { host: readHostSettings(), job: readJobSettings(), scan: readScanSettings() };
}
