/**
 * Every setting of a fine-tuning job, one row each: its type (a range or a
 * closed set), its default, the CLI flag, the VS Code setting key and one line
 * of documentation. The wire schema (messages.ts), the CLI's options and help,
 * VS Code's readSettings, the server's checks and the device's defaults are
 * derived from these rows; package.json's `contributes.configuration` is held
 * equal to them by a unit test. No other file writes a default literal.
 */

interface RowBase {
  /** The CLI flag (absent: no flag). */
  readonly flag?: string;
  /** The VS Code setting key under `mobillm.` (absent: not a VS Code setting). */
  readonly key?: string;
  /** One line of documentation (CLI help, package.json description). */
  readonly doc: string;
  /** package.json writes `doc` as markdownDescription. */
  readonly markdown?: boolean;
}
export interface IntRow extends RowBase { readonly kind: 'int'; readonly min: number; readonly max: number; readonly default?: number }
/** A number in [min, max], or in (min, max) when `exclusive`. */
export interface NumberRow extends RowBase { readonly kind: 'number'; readonly min: number; readonly max: number; readonly exclusive?: boolean; readonly default?: number }
export interface OneOfRow extends RowBase { readonly kind: 'oneOf'; readonly values: readonly number[]; readonly valueDocs?: readonly string[]; readonly default?: number }
/** A switch; `negation` is the CLI flag that turns it off (`--no-label-private`); `hostDefault`, the VS Code setting's default where the job's default depends on the host (see labelPrivate). */
export interface BooleanRow extends RowBase { readonly kind: 'boolean'; readonly default?: boolean; readonly negation?: string; readonly hostDefault?: boolean }
/** Text; with `values`, one of them (package.json's enum, `valueDocs` its descriptions). */
export interface StringRow extends RowBase { readonly kind: 'string'; readonly default?: string; readonly values?: readonly string[]; readonly valueDocs?: readonly string[] }
export interface StringsRow extends RowBase { readonly kind: 'strings'; readonly default?: readonly string[] }
export type SettingRow = IntRow | NumberRow | OneOfRow | BooleanRow | StringRow | StringsRow;

/** The value type a row describes (`bits`: 4 | 8 | 16). */
export type SettingValue<R> = R extends { kind: 'oneOf'; values: readonly (infer V)[] } ? V
  : R extends { kind: 'int' | 'number' } ? number
  : R extends { kind: 'boolean' } ? boolean
  : R extends { kind: 'string' } ? string
  : R extends { kind: 'strings' } ? string[]
  : never;

/** The settings a job is created with and keeps when it is resumed (FineTuneOptions' tuned fields). */
export const JOB_SETTINGS = {
  epochs: { kind: 'int', min: 1, max: 1000, default: 1, flag: '--epochs', key: 'epochs', doc: 'Passes over the workspace.' },
  steps: { kind: 'int', min: 1, max: 10_000_000, flag: '--steps', doc: 'Optimizer steps of the job (overrides the epochs).' },
  seqLen: { kind: 'int', min: 8, max: 4096, default: 128, flag: '--seq-len', key: 'sequenceLength', doc: 'Tokens per training sequence.' },
  batchSize: { kind: 'int', min: 1, max: 64, default: 4, flag: '--batch', key: 'batchSize', doc: 'Sequences per training step.' },
  bits: { kind: 'oneOf', values: [4, 8, 16], default: 8, flag: '--bits', key: 'bits', doc: 'Activation bits on the wire (8 = int8, 4 = int4, 16 = f16).' },
  reduction: { kind: 'int', min: 1, max: 256, default: 8, flag: '--reduction', doc: 'Side width r = hidden size / reduction.' },
  skipLayers: {
    kind: 'int', min: 0, max: 1023, default: 0, flag: '--skip-layers', key: 'skipLayers',
    doc: 'Do not send the first N layers (less exposure of early activations; the side network sees fewer layers).',
  },
  tapEvery: { kind: 'int', min: 1, max: 1023, default: 1, flag: '--tap-every', doc: 'Send every n-th layer, counting down from the last (1: every layer).' },
  learningRate: { kind: 'number', min: 1e-7, max: 0.5, default: 6e-3, flag: '--lr', doc: 'Peak learning rate.' },
  seed: { kind: 'int', min: 0, max: 2 ** 32 - 1, default: 1, flag: '--seed', doc: 'Seed of the split, the shuffles and the initial weights.' },
  checkpointEvery: { kind: 'int', min: 1, max: 10_000_000, default: 25, doc: 'The server writes a checkpoint every this many steps (and at the end).' },
  heldOutFraction: { kind: 'number', min: 0, max: 1, exclusive: true, default: 0.1, doc: 'Share of the files held out for evaluation.' },
  maxHeldOutSequences: { kind: 'int', min: 1, max: 100_000, default: 32, doc: 'Most held-out sequences evaluated.' },
  fimRate: {
    kind: 'number', min: 0, max: 1, default: 0.5, flag: '--fim-rate', key: 'fimRate',
    doc: 'For models with fill-in-the-middle tokens: the share of training sequences put in fill-in-the-middle order, the format completions use.',
  },
  contextRate: {
    kind: 'number', min: 0, max: 1, default: 0, flag: '--context-rate', key: 'trainingContextRate',
    doc: 'Share of training sequences that carry context retrieved from other training files, as inline completions\' prompts do (up to half a sequence; the context itself is not trained on; 0: none).',
  },
  labelPrivate: {
    kind: 'boolean', flag: '--label-private', negation: '--no-label-private', key: 'labelPrivate', hostDefault: true, markdown: true,
    doc: 'Label-private training with a team server (on unless turned off; the embedded server, where nothing leaves this computer, trains in the standard mode): token ids are not sent as such. The loss and the head update are computed here with the model\'s own head; the server receives the tapped layers\' activations and the loss gradient, which are not text, but from which a server can recover much of it (in the README\'s privacy audit, most of it from the first layers; `mobillm.skipLayers` sends fewer layers), and a server that computes the public model\'s head can read the next-token ids back from the gradient (the README\'s label-leak measurement: all of them). Off: the server also receives every training token\'s id, which is the code itself.',
  },
  sideNetwork: {
    kind: 'oneOf', values: [1, 2], default: 2, flag: '--side-network', key: 'sideNetwork',
    valueDocs: [
      'Per token: each token\'s correction depends on its own hidden states only.',
      'With causal self-attention: each token\'s correction also depends on the tokens before it in the file (more compute on the server, a small key cache on this computer).',
    ],
    doc: 'The side network\'s design for new fine-tunes (adapters of either design keep working).',
  },
  joinAfterNorm: { kind: 'boolean', default: false, flag: '--join-after-norm', doc: 'Add the side network\'s output after the model\'s final norm instead of before it (standard mode only).' },
  headRank: {
    kind: 'int', min: 0, max: 16, default: 16, flag: '--head-rank',
    doc: 'Rank of the update of the model\'s output head trained beside the side network, so the tokens this workspace uses can move (0: none). In label-private training it is trained on this computer, since it needs the token ids, and never leaves it until the adapter is made here.',
  },
  activationCacheGiB: {
    kind: 'number', min: 0, max: 1024, default: 4, flag: '--activation-cache', key: 'activationCacheGiB',
    doc: 'Disk on this computer (GiB) for the activations of the sequences fine-tuned on, kept across jobs (the least recently used go first), so later epochs and updates skip the model\'s forward pass for code they have seen (0: off).',
  },
  update: {
    kind: 'boolean', flag: '--update',
    doc: 'Update the workspace\'s last adapter for this model: start from it and train on the files changed since it was made, with a replay share of the others (none yet: a full job).',
  },
  replayShare: {
    kind: 'number', min: 0, max: 1, default: 0.2, flag: '--replay', key: 'update.replayShare',
    doc: 'In an update, the share of the unchanged files trained on again beside the changed ones, so the adapter does not forget them.',
  },
  timeBudget: {
    kind: 'int', min: 0, max: 604_800, default: 0, flag: '--time-budget', key: 'update.timeBudgetSeconds',
    doc: 'Most seconds of training in an update: the changed files first, then as much replay as fits (0: no limit).',
  },
  exactHead: {
    kind: 'boolean', flag: '--exact-head',
    doc: 'Label-private: compute the model\'s whole head at every step of later epochs (default: over the rows each sequence\'s tokens gave weight to in the epoch before and the workspace\'s ids, checked against the whole head at the epoch\'s first steps and at least every eighth, back to the whole head for the epoch when a check finds over 1e-3 of a token\'s probability left out).',
  },
  initFromBackbone: {
    kind: 'boolean', flag: '--init-from-backbone',
    doc: 'Start the side network from a reduced copy of the model\'s own weights, computed here (default: from random values, which trained better on the quality benchmark).',
  },
} as const satisfies Record<string, SettingRow>;

/** What the workspace scan reads (VS Code settings; the CLI scans everything but the usual skips). */
export const SCAN_SETTINGS = {
  include: { kind: 'strings', default: [], key: 'include', doc: 'Only files matching these .gitignore-style patterns (empty: all).' },
  exclude: { kind: 'strings', default: [], key: 'exclude', doc: 'Never these files (.gitignore-style patterns), on top of .gitignore, secrets, binaries and lock files.' },
  maxFileBytes: { kind: 'int', min: 1, max: 2 ** 31 - 1, default: 524_288, key: 'maxFileBytes', doc: 'Skip files larger than this (bytes).' },
} as const satisfies Record<string, SettingRow>;

/** Settings of the hosts that are not part of a job: where it runs, the model, and inline completions. */
export const HOST_SETTINGS = {
  serverUrl: {
    kind: 'string', default: '', key: 'serverUrl', markdown: true,
    doc: 'Team side-tuning server, `ws://host:8787` or `wss://host:8787`. Empty: an embedded server in VS Code on 127.0.0.1 (nothing leaves this computer). A team server receives the activations of the files you fine-tune on and loss gradients (label-private, the default: `mobillm.labelPrivate`), or with label-private off also their token ids (the text itself): use only a server you trust with this code. The token is set with **MobiLLM: Set server token** (kept in secret storage, never in settings).',
  },
  model: { kind: 'string', default: '', key: 'model', markdown: true, doc: 'Backbone GGUF: a file path or a Hugging Face URI (`hf:owner/repo:quant`). Empty: the built-in tiny model.' },
  inlineCompletions: { kind: 'boolean', default: true, key: 'inlineCompletions.enabled', doc: 'Inline completions from the model on this computer, with the workspace\'s fine-tuned adapter when one exists.' },
  completionPrefixChars: { kind: 'int', min: 100, max: 20_000, default: 1500, key: 'inlineCompletions.prefixChars', doc: 'Characters before the cursor sent to the model for a completion.' },
  completionSuffixChars: {
    kind: 'int', min: 0, max: 20_000, default: 500, key: 'inlineCompletions.suffixChars',
    doc: 'Characters after the cursor sent to models that declare fill-in-the-middle tokens (others use the text before the cursor only).',
  },
  autoUpdate: {
    kind: 'string', default: 'off', values: ['off', 'idle', 'daily'], key: 'autoUpdate',
    valueDocs: [
      'Only when asked ("MobiLLM: Update fine-tune").',
      'After a quiet period without edits or completions, when files fine-tuned on have changed.',
      'Once a day at most, when files fine-tuned on have changed (also after a quiet period).',
    ],
    doc: 'Keep the workspace\'s adapter current by updating it from the files that changed (mobillm.update.timeBudgetSeconds bounds each run).',
  },
  completionContextTokens: {
    kind: 'int', min: 0, max: 4096, default: 384, key: 'inlineCompletions.contextTokens',
    doc: 'Tokens of code from other files of the workspace put before the text at the cursor, found by a search index kept on this computer (the fine-tune\'s rules: .gitignore, secrets and binaries are never indexed). 0: none.',
  },
} as const satisfies Record<string, SettingRow>;

export type JobSettingName = keyof typeof JOB_SETTINGS;
export const JOB_SETTING_NAMES = Object.keys(JOB_SETTINGS) as JobSettingName[];
/** A job's settings as given: each may be left out. */
export type JobSettings = { -readonly [K in JobSettingName]?: SettingValue<(typeof JOB_SETTINGS)[K]> };

type Table = Record<string, SettingRow>;
type WithDefault<T extends Table> = { [K in keyof T]: T[K] extends { default: unknown } ? K : never }[keyof T];
/** The defaults of a table's rows that have one. */
export type Defaults<T extends Table> = { -readonly [K in WithDefault<T>]: SettingValue<T[K]> };

export function defaultsOf<T extends Table>(table: T): Defaults<T> {
  const out: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(table)) if (row.default !== undefined) out[name] = Array.isArray(row.default) ? [...row.default] : row.default;
  return out as Defaults<T>;
}

/** The defaults of the job settings (steps and initFromBackbone have none: the epochs and the side network decide). */
export const JOB_DEFAULTS = defaultsOf(JOB_SETTINGS);

/** The VS Code setting of a job setting (`mobillm.sequenceLength`), or undefined when VS Code does not expose it. */
export function settingKeyOf(name: JobSettingName): string | undefined {
  const row: SettingRow = JOB_SETTINGS[name];
  return row.key ? `mobillm.${row.key}` : undefined;
}

/** The CLI flag of a job setting (`--seq-len`), or undefined when the CLI has none. */
export function settingFlagOf(name: JobSettingName): string | undefined {
  const row: SettingRow = JOB_SETTINGS[name];
  return row.flag;
}

/** A job's settings once the defaults (and a resumed job's record) are applied: what hosts show. */
export type ResolvedJobSettings = JobSettings & typeof JOB_DEFAULTS;

/** What a row accepts, in words ("a whole number from 8 to 4096", "4, 8 or 16"). */
export function describeRange(row: SettingRow): string {
  switch (row.kind) {
    case 'int': return `a whole number from ${row.min} to ${row.max}`;
    case 'number': return row.exclusive ? `a number between ${row.min} and ${row.max}` : `a number from ${row.min} to ${row.max}`;
    case 'oneOf': return `${row.values.slice(0, -1).join(', ')} or ${row.values[row.values.length - 1]}`;
    case 'boolean': return 'true or false';
    case 'string': return row.values ? row.values.map((v) => `"${v}"`).join(', ') : 'text';
    case 'strings': return 'a list of texts';
  }
}

/** Whether `value` is one the row accepts. */
export function settingAccepts(row: SettingRow, value: unknown): boolean {
  switch (row.kind) {
    case 'int': return Number.isSafeInteger(value) && (value as number) >= row.min && (value as number) <= row.max;
    case 'number':
      return typeof value === 'number' && Number.isFinite(value) && (row.exclusive ? value > row.min && value < row.max : value >= row.min && value <= row.max);
    case 'oneOf': return typeof value === 'number' && row.values.includes(value);
    case 'boolean': return typeof value === 'boolean';
    case 'string': return typeof value === 'string' && (!row.values || row.values.includes(value));
    case 'strings': return Array.isArray(value) && value.every((x) => typeof x === 'string');
  }
}

/** A refused setting: its name (as the caller names it) and what it must be. */
export interface SettingProblem {
  name: string;
  message: string;
}

/** The first given value of `values` that its row refuses, or undefined. */
export function settingsProblem<T extends Table>(table: T, values: { [K in keyof T]?: unknown }, nameOf: (name: keyof T & string) => string = (n) => n): SettingProblem | undefined {
  for (const [name, row] of Object.entries(table)) {
    const v = values[name as keyof T];
    if (v === undefined || settingAccepts(row, v)) continue;
    const shown = typeof v === 'string' ? `"${v.slice(0, 40)}"` : JSON.stringify(v)?.slice(0, 40) ?? String(v);
    return { name: nameOf(name), message: `${nameOf(name)} must be ${describeRange(row)} (got ${shown}).` };
  }
  return undefined;
}
