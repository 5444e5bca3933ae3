import * as path from 'node:path';
import { Command } from 'commander';
import { ensureDefaultModel } from '../core/defaultModel';
import { defaultStoreDir } from '../core/defaultStoreDir';
import { FineTuneJob } from '../core/job/FineTuneJob';
import { checkFineTuneOptions, TunedOption } from '../core/job/FineTuneOptions';
import { JobRecordStore } from '../core/job/JobRecordStore';
import { confirmPrivacyLine, serverPlace } from '../core/privacyText';
import { MobiError } from '../core/MobiError';
import { describeSkipped } from '../core/scanWorkspace';
import { ProgressDisplay } from './ProgressDisplay';

/** The flag of each tuned option, for messages. */
const FLAGS: Record<TunedOption, string> = {
  epochs: '--epochs', steps: '--steps', seqLen: '--seq-len', batchSize: '--batch', bits: '--bits', reduction: '--reduction',
  skipLayers: '--skip-layers', learningRate: '--lr', seed: '--seed', checkpointEvery: 'checkpointEvery', heldOutFraction: 'heldOutFraction', maxHeldOutSequences: 'maxHeldOutSequences', fimRate: '--fim-rate', labelPrivate: '--label-private',
  sideNetwork: '--side-network', tapEvery: '--tap-every', joinAfterNorm: '--join-after-norm', initFromBackbone: '--init-from-backbone',
};

interface FinetuneFlags {
  workspace?: string; model?: string; server?: string; token?: string; epochs?: string; steps?: string; seqLen?: string; batch?: string; bits?: string;
  skipLayers?: string; reduction?: string; lr?: string; seed?: string; fimRate?: string; labelPrivate?: boolean; sideNetwork?: string; tapEvery?: string; joinAfterNorm?: boolean; initFromBackbone?: boolean; randomInit?: boolean; resume?: string; store: string; json?: boolean;
}

/** A flag's number (range checks happen once, in the core, with the flag's name). */
function num(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || Number.isNaN(n)) throw new MobiError('BAD_ARGUMENT', `${flag} must be a number (got "${value.slice(0, 40)}").`);
  return n;
}

/** --init-from-backbone or --random-init (not both), or neither: the core's default. */
function initFlag(o: FinetuneFlags): boolean | undefined {
  if (o.initFromBackbone && o.randomInit) throw new MobiError('BAD_ARGUMENT', '--init-from-backbone and --random-init cannot both be given.');
  return o.initFromBackbone ? true : o.randomInit ? false : undefined;
}

/** The exact command that resumes a job. */
export function resumeCommand(jobId: string, store: string): string {
  return `mobillm finetune --resume ${jobId}${store === defaultStoreDir() ? '' : ` --store ${store}`}`;
}

/** `mobillm finetune`: defaults live in the core (FineTuneOptions), so a resumed job can tell given flags from defaults. */
export function finetuneCommand(run: (body: () => Promise<void>) => Promise<void>): Command {
  return new Command('finetune')
    .description('Fine-tune the side network on a workspace (embedded local server unless --server is given)')
    .option('--workspace <dir>', 'folder of source code (when resuming: the job\'s own)')
    .option('--model <file|hf:uri>', 'GGUF backbone (default: the built-in tiny model, created once; when resuming: the job\'s own)')
    .option('--server <url>', 'team server, ws://host:port or wss://host:port')
    .option('--token <token>', 'server token (or MOBILLM_TOKEN)')
    .option('--epochs <n>', 'passes over the training data (default 1)')
    .option('--steps <n>', 'optimizer steps (overrides --epochs)')
    .option('--seq-len <n>', 'tokens per sequence (default 128)')
    .option('--batch <n>', 'sequences per batch (default 4)')
    .option('--bits <n>', 'activation bits on the wire: 4, 8 or 16 (default 8)')
    .option('--skip-layers <n>', 'do not send the first n layers (default 0)')
    .option('--reduction <n>', 'side width r = hidden size / n (default 8)')
    .option('--lr <x>', 'peak learning rate (default 0.002)')
    .option('--seed <n>', 'seed (default 1)')
    .option('--fim-rate <x>', 'share of training sequences in fill-in-the-middle order, for models with FIM tokens (default 0.5)')
    .option('--label-private', 'keep the target ids on this computer: the loss is computed here with the model\'s own head, the server gets activations and gradients only')
    .option('--side-network <n>', 'side network design: 1 per token, 2 with causal self-attention within each sequence (default 1)')
    .option('--tap-every <n>', 'send every n-th layer, counting down from the last (default 1: every layer)')
    .option('--init-from-backbone', 'start the side network from a reduced copy of the model\'s own weights, computed here (default for --side-network 2)')
    .option('--random-init', 'start the side network from random values (default for --side-network 1)')
    .option('--join-after-norm', 'add the side network\'s output after the model\'s final norm instead of before it (standard mode only)')
    .option('--resume <jobId|last>', 'continue a job started on this device with all its settings ("last": the latest; see "mobillm jobs")')
    .option('--store <dir>', 'device store (adapters, jobs, default model)', defaultStoreDir())
    .option('--json', 'print the result as JSON on the last line')
    .action((o: FinetuneFlags) => run(async () => {
      const token = o.token ?? process.env.MOBILLM_TOKEN;
      if (o.server && !token) throw new MobiError('UNAUTHORIZED', 'A server needs a token: pass --token or set MOBILLM_TOKEN (ask your team admin for one).');
      const record = o.resume ? new JobRecordStore(o.store).load(o.resume) : undefined;
      const workspace = o.workspace ?? record?.workspace;
      if (!workspace) throw new MobiError('BAD_ARGUMENT', '--workspace is required (the folder of source code to learn from).');
      const tuned = {
        epochs: num(o.epochs, '--epochs'), steps: num(o.steps, '--steps'), seqLen: num(o.seqLen, '--seq-len'), batchSize: num(o.batch, '--batch'),
        bits: num(o.bits, '--bits') as 4 | 8 | 16 | undefined, skipLayers: num(o.skipLayers, '--skip-layers'), reduction: num(o.reduction, '--reduction'),
        learningRate: num(o.lr, '--lr'), seed: num(o.seed, '--seed'), fimRate: num(o.fimRate, '--fim-rate'), labelPrivate: o.labelPrivate,
        sideNetwork: num(o.sideNetwork, '--side-network') as 1 | 2 | undefined, tapEvery: num(o.tapEvery, '--tap-every'), joinAfterNorm: o.joinAfterNorm, initFromBackbone: initFlag(o), describeOption: (k: TunedOption) => FLAGS[k],
      };
      checkFineTuneOptions({ workspace, model: '', ...tuned }); // before anything is created or loaded
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
        confirm: (scan) => {
          display.message(`workspace ${path.resolve(workspace)}: ${scan.files.length} files (${(scan.includedBytes / 1024).toFixed(1)} KB) included`);
          for (const line of describeSkipped(scan)) display.message(`  ${line}`);
          if (o.server) display.message(confirmPrivacyLine(serverPlace(o.server, o.labelPrivate ?? record?.settings?.labelPrivate)));
          return true;
        },
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
    .action((o: { store: string; json?: boolean }) => run(async () => {
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
