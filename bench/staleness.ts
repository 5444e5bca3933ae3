/**
 * Keeping an adapter current on a real code history that nobody here wrote:
 * successive published versions of one npm package, fetched with `npm pack`
 * into bench/.cache/staleness/. An adapter is trained on the first version;
 * then for each later version the workspace (one folder, so the device store
 * finds its adapter) takes that version's files and
 *   updated:   `--update` of the adapter the workspace has (the chain of
 *              updates so far), in the device store that keeps the activation
 *              cache across jobs;
 *   retrained: a full job on that version from scratch in an empty store (no
 *              cached activations: every sequence through the forward pass, as
 *              before updates existed);
 * and on the held-out files that changed in that version, the held-out loss of
 * the model alone (base), of the adapter before the update (stale), updated and
 * retrained, computed on this device with each adapter; on the held-out files
 * that did not change, how much the update lost against the stale adapter
 * (forgetting). Device CPU is this process's (the embedded server trains in
 * its own process); wall is each job's.
 *
 *   npm run bench:staleness [-- --package ajv --versions 8.6.0,8.8.0,8.10.0,8.11.0,8.12.0 --dir lib --model FILE --replays 0,0.2,0.5]
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../extension/core/job/FineTuneJob';
import { Backbone } from '../extension/core/model/Backbone';
import { ensureDefaultModel } from '../extension/core/model/defaultModel';
import { buildDataset, heldOutFiles } from '../extension/core/workspace/dataset';
import { ScannedFile, scanWorkspaceAsync } from '../extension/core/workspace/scanWorkspace';
import { fileDigests } from '../extension/core/job/updatePlan';
import { JOB_DEFAULTS } from '../common/jobSettings';
import { BENCH_CACHE, machineDescription } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const HELD_OUT_FRACTION = 0.3;
const SEED = 1;

interface JobRun {
  r: FineTuneResult;
  cpuSeconds: number;
  adapter: string;
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : fallback;
}

/** A published version's files, fetched once with npm pack. */
function fetchVersion(pkg: string, version: string, dir: string): string {
  const root = path.join(BENCH_CACHE, 'staleness', `${pkg}-${version}`);
  const src = path.join(root, 'package', dir);
  if (fs.existsSync(src)) return src;
  fs.mkdirSync(root, { recursive: true });
  const tgz = execFileSync('npm', ['pack', `${pkg}@${version}`, '--silent', '--pack-destination', root], { encoding: 'utf8' }).trim().split('\n').pop()!;
  execFileSync('tar', ['xzf', path.join(root, tgz), '-C', root]);
  if (!fs.existsSync(src)) throw new Error(`${pkg}@${version} has no ${dir}/`);
  return src;
}

/** The workspace folder takes a version's files (the folder stays: the device store keeps its adapter by path). */
function setWorkspace(ws: string, src: string): void {
  fs.rmSync(ws, { recursive: true, force: true });
  fs.cpSync(src, ws, { recursive: true });
}

async function job(o: FineTuneOptions, keepAs: string): Promise<JobRun> {
  const c0 = process.cpuUsage();
  const r = await new FineTuneJob({ threads: 1, heldOutFraction: HELD_OUT_FRACTION, seed: SEED, ...o }).run();
  const c = process.cpuUsage(c0);
  fs.copyFileSync(r.adapter, keepAs);
  return { r, cpuSeconds: (c.user + c.system) / 1e6, adapter: keepAs };
}

/** Mean held-out loss of sequences with an adapter (undefined: the model alone). */
async function lossOf(bb: Backbone, adapter: string | undefined, seqs: Int32Array[]): Promise<number> {
  if (adapter) await bb.useAdapterFile(adapter);
  else await bb.clearAdapter();
  let lossSum = 0;
  let tokens = 0;
  for (let i = 0; i < seqs.length; i += bb.maxSequences) {
    const r = await bb.sequenceLoss(seqs.slice(i, i + bb.maxSequences));
    lossSum += r.lossSum;
    tokens += r.tokens;
  }
  return lossSum / tokens;
}

/** The sequences of `files` among a version's files, cut as a job cuts them. */
function sequencesOf(bb: Backbone, all: ScannedFile[], files: Set<string>): Int32Array[] {
  if (files.size === 0) return [];
  return buildDataset(all, (t) => bb.tokenize(t), { seqLen: JOB_DEFAULTS.seqLen, heldOut: files, maxHeldOutSequences: 100_000, seed: SEED }).heldOut;
}

async function main(): Promise<void> {
  const pkg = arg('package', 'ajv');
  const versions = arg('versions', '8.6.0,8.8.0,8.10.0,8.11.0,8.12.0').split(',');
  const dir = arg('dir', 'lib');
  const replays = arg('replays', '0,0.2,0.5').split(',').map(Number);
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  const work = fs.mkdtempSync(path.join(BENCH_CACHE, 'staleness-run-'));
  const model = arg('model', '') || ensureDefaultModel(path.join(work, 'models'));
  const sources = versions.map((v) => fetchVersion(pkg, v, dir));
  const ws = path.join(work, pkg);
  const store = path.join(work, 'store');
  const adapters = path.join(work, 'adapters');
  fs.mkdirSync(adapters);
  const bb = await Backbone.open(model, { contextSize: JOB_DEFAULTS.seqLen * 2 * 4 + 8, maxSequences: 4, threads: 1 });
  try {
    setWorkspace(ws, sources[0]!);
    const first = await job({ workspace: ws, model, storeDir: store }, path.join(adapters, 'v0.mobi'));
    console.log(`${pkg}@${versions[0]}: ${first.r.steps} steps, held-out ${first.r.heldOutLossBefore.toFixed(3)} -> ${first.r.heldOutLossAfter.toFixed(3)}, ${first.cpuSeconds.toFixed(1)} s CPU`);
    let stale = first.adapter;
    let before = fileDigests((await scanWorkspaceAsync(ws)).files);
    const steps: unknown[] = [];
    let replaySweep: unknown[] | undefined;
    for (let k = 1; k < versions.length; k++) {
      setWorkspace(ws, sources[k]!);
      const files = (await scanWorkspaceAsync(ws)).files;
      const now = fileDigests(files);
      const changed = new Set(files.filter((f) => before[f.path] !== now[f.path]).map((f) => f.path));
      const held = new Set(heldOutFiles(files, { seed: SEED, heldOutFraction: HELD_OUT_FRACTION }).map((f) => f.path));
      const changedHeld = sequencesOf(bb, files, new Set([...held].filter((p) => changed.has(p))));
      const unchangedHeld = sequencesOf(bb, files, new Set([...held].filter((p) => !changed.has(p))));
      const evaluate = async (adapter: string | undefined): Promise<{ changed: number; unchanged: number }> => ({
        changed: changedHeld.length > 0 ? await lossOf(bb, adapter, changedHeld) : NaN, unchanged: await lossOf(bb, adapter, unchangedHeld),
      });
      const base = await evaluate(undefined);
      const staleLoss = await evaluate(stale);
      if (k === 1 && replays.length > 1) {
        // The replay share: each value updates the same stale adapter, from a copy of the store (its cache included).
        replaySweep = [];
        for (const replay of replays) {
          const copy = path.join(work, `store-replay-${replay}`);
          fs.cpSync(store, copy, { recursive: true });
          const u = await job({ workspace: ws, model, storeDir: copy, update: true, replayShare: replay }, path.join(adapters, `v1-replay-${replay}.mobi`));
          const l = await evaluate(u.adapter);
          replaySweep.push({ replayShare: replay, heldOutChanged: l.changed, forgettingUnchanged: l.unchanged - staleLoss.unchanged, deviceCpuSeconds: u.cpuSeconds, wallSeconds: u.r.seconds, steps: u.r.steps });
          fs.rmSync(copy, { recursive: true, force: true });
          console.log(`  replay ${replay}: changed ${l.changed.toFixed(4)}, forgetting ${(l.unchanged - staleLoss.unchanged).toFixed(4)}, ${u.cpuSeconds.toFixed(1)} s CPU, ${u.r.steps} steps`);
        }
      }
      const updated = await job({ workspace: ws, model, storeDir: store, update: true }, path.join(adapters, `v${k}-updated.mobi`));
      const retrained = await job({ workspace: ws, model, storeDir: path.join(work, `store-retrain-${k}`) }, path.join(adapters, `v${k}-retrained.mobi`));
      fs.rmSync(path.join(work, `store-retrain-${k}`), { recursive: true, force: true });
      const upd = await evaluate(updated.adapter);
      const re = await evaluate(retrained.adapter);
      const step = {
        version: versions[k], changedFiles: changed.size, heldOutChangedFiles: [...held].filter((p) => changed.has(p)).length, heldOutChangedSequences: changedHeld.length,
        heldOut: { base: base.changed, stale: staleLoss.changed, updated: upd.changed, retrained: re.changed },
        heldOutUnchanged: { base: base.unchanged, stale: staleLoss.unchanged, updated: upd.unchanged, retrained: re.unchanged },
        forgettingUnchanged: upd.unchanged - staleLoss.unchanged,
        deviceCpuSeconds: { updated: updated.cpuSeconds, retrained: retrained.cpuSeconds },
        wallSeconds: { updated: updated.r.seconds, retrained: retrained.r.seconds },
        bytesSent: { updated: updated.r.bytesSent, retrained: retrained.r.bytesSent },
        steps: { updated: updated.r.steps, retrained: retrained.r.steps },
        cache: updated.r.cache,
      };
      steps.push(step);
      console.log(JSON.stringify(step));
      stale = updated.adapter;
      before = now;
    }
    const all = steps as { heldOut: { updated: number; retrained: number }; forgettingUnchanged: number; deviceCpuSeconds: { updated: number; retrained: number }; wallSeconds: { updated: number; retrained: number } }[];
    const mean = (f: (s: (typeof all)[number]) => number): number => all.reduce((a, s) => a + f(s), 0) / all.length;
    const file = writeResult('staleness.json', {
      benchmark: 'an adapter kept current over published versions of an npm package: --update against a full retrain',
      command: `npm run bench:staleness -- --package ${pkg} --versions ${versions.join(',')} --dir ${dir}`,
      machine: machineDescription(), model: path.basename(model), package: pkg, versions, workspaceDir: dir, heldOutFraction: HELD_OUT_FRACTION,
      mode: 'embedded server (standard mode, head update rank 16), defaults otherwise',
      replayShare: JOB_DEFAULTS.replayShare, replaySweep,
      summary: {
        updatedMinusRetrainedNats: mean((s) => s.heldOut.updated - s.heldOut.retrained),
        forgettingUnchanged: mean((s) => s.forgettingUnchanged),
        deviceCpuUpdatedOverRetrained: mean((s) => s.deviceCpuSeconds.updated / s.deviceCpuSeconds.retrained),
        wallUpdatedOverRetrained: mean((s) => s.wallSeconds.updated / s.wallSeconds.retrained),
        goals: { updatedMinusRetrainedNats: 0.05, deviceCpuUpdatedOverRetrained: 0.25, wallUpdatedOverRetrained: 0.35, forgettingUnchanged: 0.02 },
      },
      steps,
    });
    console.log(`wrote ${file}`);
  } finally {
    bb.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
