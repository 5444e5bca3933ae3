import * as path from 'node:path';
import { Command, Option } from 'commander';
import { describeRange, JOB_SETTING_NAMES, JOB_SETTINGS, JobSettingName, JobSettings, SettingRow, settingFlagOf } from '../../common/jobSettings';
import { ensureDefaultModel } from '../core/model/defaultModel';
import { defaultStoreDir } from '../core/store/defaultStoreDir';
import { FineTuneJob } from '../core/job/FineTuneJob';
import { resolveFineTuneOptions } from '../core/job/FineTuneOptions';
import { JobRecordStore } from '../core/job/JobRecordStore';
import { pruneActivationCaches } from '../core/job/ActivationCache';
import { confirmPrivacyLine, serverPlace } from '../core/text/privacyText';
import { MobiError } from '../core/MobiError';
import { updatePlanText } from '../core/text/statusText';
import { describeSkipped } from '../core/workspace/scanWorkspace';
import { ProgressDisplay } from './ProgressDisplay';

interface FinetuneFlags {
  workspace?: string; model?: string; server?: string; token?: string; randomInit?: boolean; resume?: string; store: string; json?: boolean;
  [setting: string]: string | boolean | undefined;
}

/** How the CLI names a setting in messages: its flag, or its name where it has none. */
const flagName = (k: JobSettingName): string => settingFlagOf(k) ?? k;

/** The options of the job settings that have a flag (common/jobSettings.ts): the flag, a value placeholder, the row's doc and default. */
function settingOptions(): Option[] {
  return JOB_SETTING_NAMES.flatMap((name) => {
    const row: SettingRow = JOB_SETTINGS[name];
    if (!row.flag) return [];
    const spec = row.kind === 'boolean' ? row.flag : `${row.flag} <${row.kind === 'number' ? 'x' : 'n'}>`;
    const shown = row.kind === 'oneOf' ? ` (${describeRange(row)}${row.default !== undefined ? `; default ${row.default}` : ''})`
      : row.kind === 'boolean' || row.default === undefined ? '' : ` (default ${String(row.default)})`;
    const negation = row.kind === 'boolean' && row.negation ? [new Option(row.negation, `turn ${row.flag} off`).default(undefined)] : [];
    return [new Option(spec, `${row.doc}${shown}`).default(undefined), ...negation];
  });
}

/** The settings given as flags, as numbers and booleans (ranges are checked once, in the core, with the flag's name). */
function settingsFromFlags(o: FinetuneFlags, options: Option[]): JobSettings {
  const out: Record<string, number | boolean> = {};
  for (const name of JOB_SETTING_NAMES) {
    const flag = settingFlagOf(name);
    const option = options.find((x) => x.long === flag);
    const value = option ? o[option.attributeName()] : undefined;
    if (value === undefined) continue;
    if (typeof value === 'boolean') out[name] = value;
    else {
      const n = Number(value);
      if (value.trim() === '' || Number.isNaN(n)) throw new MobiError('BAD_ARGUMENT', `${flag} must be a number (got "${value.slice(0, 40)}").`);
      out[name] = n;
    }
  }
  if (o.randomInit) {
    if (out.initFromBackbone) throw new MobiError('BAD_ARGUMENT', `${flagName('initFromBackbone')} and --random-init cannot both be given.`);
    out.initFromBackbone = false;
  }
  return out as JobSettings; // checked against the table by resolveFineTuneOptions before use
}

/** The exact command that resumes a job. */
export function resumeCommand(jobId: string, store: string): string {
  return `mobillm finetune --resume ${jobId}${store === defaultStoreDir() ? '' : ` --store ${store}`}`;
}

/** `mobillm finetune`: defaults live in the core (FineTuneOptions), so a resumed job can tell given flags from defaults. */
export function finetuneCommand(run: (body: () => Promise<void>) => Promise<void>): Command {
  const options = settingOptions();
  const command = new Command('finetune')
    .description('Fine-tune the side network on a workspace (embedded local server unless --server is given)')
    .option('--workspace <dir>', 'folder of source code (when resuming: the job\'s own)')
    .option('--model <file|hf:uri>', 'GGUF backbone (default: the built-in tiny model, created once; when resuming: the job\'s own)')
    .option('--server <url>', 'team server, ws://host:port or wss://host:port')
    .option('--token <token>', 'server token (or MOBILLM_TOKEN)');
  for (const option of options) command.addOption(option);
  return command
    .option('--random-init', 'start the side network from random values (the default)')
    .option('--resume <jobId|last>', 'continue a job started on this device with all its settings ("last": the latest; see "mobillm jobs")')
    .option('--store <dir>', 'device store (adapters, jobs, default model)', defaultStoreDir())
    .option('--json', 'print the result as JSON on the last line')
    .action((o: FinetuneFlags) => run(async () => {
      const token = o.token ?? process.env.MOBILLM_TOKEN;
      if (o.server && !token) throw new MobiError('UNAUTHORIZED', 'A server needs a token: pass --token or set MOBILLM_TOKEN (ask your team admin for one).');
      const record = o.resume ? new JobRecordStore(o.store).load(o.resume) : undefined;
      const workspace = o.workspace ?? record?.workspace;
      if (!workspace) throw new MobiError('BAD_ARGUMENT', '--workspace is required (the folder of source code to learn from).');
      const tuned = { ...settingsFromFlags(o, options), describeOption: flagName };
      // Checked with the defaults applied (label-private follows --server) before anything is created or loaded.
      resolveFineTuneOptions({ workspace, model: '', server: o.server ? { url: o.server, token: token ?? '' } : undefined, ...tuned });
      const model = o.model ?? record?.model ?? ensureDefaultModel(o.store);
      const display = new ProgressDisplay();
      const controller = new AbortController();
      // A listener that stays: with a once-listener gone, a signal-exit handler in a dependency re-raises SIGINT and the process dies silently.
      process.on('SIGINT', () => {
        if (controller.signal.aborted) process.exit(130);
        display.message('cancelling: the server keeps the last checkpoint (Ctrl-C again to quit at once)');
        controller.abort();
      });
      let jobId = record?.jobId;
      const job = new FineTuneJob({
        workspace, model, server: o.server ? { url: o.server, token: token! } : undefined, ...tuned,
        resumeJobId: record?.jobId, storeDir: o.store, signal: controller.signal,
        confirm: (scan, settings) => {
          display.message(`workspace ${path.resolve(workspace)}: ${scan.files.length} files (${(scan.includedBytes / 1024).toFixed(1)} KB) included`);
          for (const line of describeSkipped(scan)) display.message(`  ${line}`);
          if (o.server) display.message(confirmPrivacyLine(serverPlace(o.server, settings.labelPrivate), settings));
          return true;
        },
        onUpdatePlan: (u) => display.message(`update: ${updatePlanText(u)}`),
        onProgress: (p) => {
          if (p.jobId && p.jobId !== jobId) {
            jobId = p.jobId;
            display.message(`job ${jobId} started; if it stops, resume it with: ${resumeCommand(jobId, o.store)}`);
          }
          display.update(p);
        },
      });
      let r;
      try {
        r = await job.run();
      } catch (err) {
        display.stop();
        const e = MobiError.from(err);
        if (e.code === 'UP_TO_DATE') {
          process.stdout.write(`${o.json ? JSON.stringify({ upToDate: true, message: e.message }) : e.message}\n`);
          return;
        }
        if (jobId && e.code !== 'BAD_ARGUMENT' && e.code !== 'MODEL_MISMATCH') {
          throw new MobiError(e.code, `${e.message}\nJob ${jobId} keeps its last checkpoint; resume it with: ${resumeCommand(jobId, o.store)}`, { cause: err });
        }
        throw e;
      }
      display.stop();
      const summary = {
        jobId: r.jobId, steps: r.steps, trainTokens: r.trainTokens, heldOutLossBefore: r.heldOutLossBefore, heldOutLossAfter: r.heldOutLossAfter,
        adapter: r.adapter, model: r.model, bytesSent: r.bytesSent, seconds: r.seconds,
      };
      if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else {
        process.stdout.write(`held-out loss ${r.heldOutLossBefore.toFixed(4)} -> ${r.heldOutLossAfter.toFixed(4)} (perplexity ${Math.exp(r.heldOutLossBefore).toFixed(1)} -> ${Math.exp(r.heldOutLossAfter).toFixed(1)})\n`);
        process.stdout.write(`job ${r.jobId}: ${r.steps} steps, ${r.trainTokens} tokens, ${(r.bytesSent / 2 ** 20).toFixed(1)} MiB sent, ${r.seconds.toFixed(1)} s\nadapter: ${r.adapter}\n`);
      }
    }));
}

/** `mobillm jobs`: this device's fine-tuning jobs, the latest first. */
export function jobsCommand(run: (body: () => Promise<void>) => Promise<void>): Command {
  return new Command('jobs')
    .description('This device\'s fine-tuning jobs: state, progress, workspace, model and the command that resumes each')
    .option('--store <dir>', 'device store', defaultStoreDir())
    .option('--json', 'print the records as JSON')
    .option('--prune', 'delete the activation cache on this computer (later jobs compute their activations again)')
    .action((o: { store: string; json?: boolean; prune?: boolean }) => run(async () => {
      if (o.prune) {
        const freed = pruneActivationCaches(o.store);
        process.stdout.write(`deleted the activation cache: ${freed.caches} folders, ${(freed.bytes / 2 ** 20).toFixed(1)} MiB\n`);
        return;
      }
      const records = new JobRecordStore(o.store).list();
      if (o.json) {
        process.stdout.write(`${JSON.stringify(records)}\n`);
        return;
      }
      if (records.length === 0) {
        process.stdout.write('no fine-tuning jobs on this device yet (start one with: mobillm finetune --workspace DIR)\n');
        return;
      }
      for (const r of records) {
        const total = r.config?.totalSteps;
        const losses = r.heldOutLossBefore !== undefined ? `, held-out ${r.heldOutLossBefore.toFixed(3)}${r.heldOutLossAfter !== undefined ? ` -> ${r.heldOutLossAfter.toFixed(3)}` : ''}` : '';
        process.stdout.write(`${r.jobId}  ${r.phase ?? 'unknown'}  step ${r.step ?? 0}${total ? `/${total}` : ''}${losses}  (${r.updatedAt ?? ''})\n`);
        process.stdout.write(`  workspace ${r.workspace}\n  model ${r.model ?? r.fingerprint}\n`);
        if (r.phase !== 'done') process.stdout.write(`  resume: ${resumeCommand(r.jobId, o.store)}\n`);
      }
    }));
}
