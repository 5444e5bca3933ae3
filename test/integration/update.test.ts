import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FineTuneJob, FineTuneOptions, FineTuneResult } from '../../extension/core/job/FineTuneJob';
import type { UpdateSummary } from '../../extension/core/job/FineTuneOptions';
import { JobRecordStore } from '../../extension/core/job/JobRecordStore';
import { Backbone } from '../../extension/core/model/Backbone';
import { AdapterStore } from '../../extension/core/store/AdapterStore';
import { modelFingerprint } from '../../extension/core/model/modelFingerprint';
import { heldOutFiles } from '../../extension/core/workspace/dataset';
import { DEVICE_CLI } from '../../harness/serverProcess';
import { expectCode } from '../helpers/expectCode';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL = { layers: 2, embd: 64, heads: 2, seed: 11 };
const SEQ_LEN = 16;

/** One job with the embedded server on the tiny model; `plans` receives what an update said it trains on. */
function run(ws: string, store: string, extra: Partial<FineTuneOptions> = {}, plans: UpdateSummary[] = []): Promise<FineTuneResult> {
  return new FineTuneJob({
    workspace: ws, model: tinyModel(MODEL), storeDir: store, threads: 1, seqLen: SEQ_LEN, batchSize: 2, checkpointEvery: 4, maxHeldOutSequences: 64,
    onUpdatePlan: (p) => plans.push(p), ...extra,
  }).run();
}

/** A training file of the workspace (not held out by the split every job here uses). */
function trainingFile(ws: string, k = 0): string {
  const files = fs.readdirSync(ws).map((p) => ({ path: p }));
  const held = new Set(heldOutFiles(files).map((f) => f.path));
  return files.filter((f) => !held.has(f.path))[k]!.path;
}

/** A copy of a device store (its adapter and activation cache), for one update to change. */
function copyOf(store: string): string {
  const copy = tmpDir('update-copy');
  fs.cpSync(store, copy, { recursive: true });
  return copy;
}

/**
 * Runs `body` with the workspace's files changed (`undefined`: deleted), then
 * puts them back: the store keeps adapters by workspace path, so the
 * workspace itself is edited.
 */
async function withEdits(ws: string, edits: Record<string, (text: string) => string | undefined>, body: (originals: Record<string, string>) => Promise<void>): Promise<void> {
  const originals = Object.fromEntries(Object.keys(edits).map((f) => [f, fs.readFileSync(path.join(ws, f), 'utf8')]));
  try {
    for (const [f, edit] of Object.entries(edits)) {
      const text = edit(originals[f]!);
      if (text === undefined) fs.rmSync(path.join(ws, f));
      else fs.writeFileSync(path.join(ws, f), text);
    }
    await body(originals);
  } finally {
    for (const [f, text] of Object.entries(originals)) fs.writeFileSync(path.join(ws, f), text);
  }
}

/** Two runs of one job trained the same: steps, tokens, and held-out loss within 1e-3. */
function sameTraining(a: { steps: number; trainTokens: number; heldOutLossAfter: number }, b: typeof a): void {
  assert.equal(b.steps, a.steps);
  assert.equal(b.trainTokens, a.trainTokens);
  assert.ok(Math.abs(b.heldOutLossAfter - a.heldOutLossAfter) < 1e-3, `${b.heldOutLossAfter} against ${a.heldOutLossAfter}`);
}

describe('updating an adapter from what changed (--update)', function () {
  this.timeout(300_000);
  let ws: string;
  let store: string;
  let first: FineTuneResult;
  let bb: Backbone;

  before(async () => {
    ws = makeWorkspace(31, 10, 40);
    store = tmpDir('update-store');
    first = await run(ws, store);
    bb = await Backbone.open(tinyModel(MODEL), { contextSize: 64, maxSequences: 1, threads: 1 });
  });
  after(() => bb?.dispose());

  it('with nothing changed says the adapter is up to date, and keeps it', async () => {
    const meta = new AdapterStore(store).find(ws, await modelFingerprint(tinyModel(MODEL)))!.meta;
    assert.equal(meta.jobId, first.jobId);
    assert.equal(Object.keys(meta.files!).length, 10, 'the adapter lists the files it was made from');
    await expectCode(run(ws, store, { update: true }), 'UP_TO_DATE');
    assert.equal(new AdapterStore(store).find(ws, await modelFingerprint(tinyModel(MODEL)))!.meta.jobId, first.jobId);
  });

  it('trains on the new sequences of the edited file only (replay 0), starts from the previous adapter and takes unchanged sequences from the cache', async () => {
    const copy = copyOf(store);
    const edited = trainingFile(ws);
    const appended = '\nexport function addedLater(x: number): number {\n  return x * 3 + 1;\n}\n';
    await withEdits(ws, { [edited]: (t) => t + appended }, async (originals) => {
      const original = originals[edited]!;
      const plans: UpdateSummary[] = [];
      const r = await run(ws, copy, { update: true, replayShare: 0 }, plans);
      assert.equal(plans.length, 1);
      const p = plans[0]!;
      assert.ok(!('none' in p));
      assert.deepEqual({ changed: p.changed, replayed: p.replayed, deleted: p.deleted }, { changed: 1, replayed: 0, deleted: 0 });
      // Trained tokens: the edited file's sequences from the edit on; those before it kept their tokens and the adapter knows them.
      const n = bb.tokenize(original + appended).length;
      const m = bb.tokenize(original).length;
      assert.ok(r.trainTokens > n - m && r.trainTokens <= n - m + 2 * SEQ_LEN, `${r.trainTokens} tokens trained: the appended ${n - m} and the sequence the edit reached, of the file's ${n - 1}`);
      // Step 0 is the previous adapter: the held-out files did not change, so the loss before is the last job's after.
      assert.ok(Math.abs(r.heldOutLossBefore - first.heldOutLossAfter) < 1e-6, `${r.heldOutLossBefore} against ${first.heldOutLossAfter}`);
      // Only the sequences the edit changed ran through the model: the file's first ones, all of the held-out set, came from the cache.
      const c = r.cache!;
      const sequences = Math.ceil((n - 1) / SEQ_LEN);
      assert.ok(c.sequenceMisses < sequences, `${c.sequenceMisses} sequences computed, of the edited file's ${sequences}`);
      assert.ok(r.timings.deviceForwardTokens < n - 1, 'fewer tokens through the model than trained on');
      assert.equal(r.timings.evalForwardSeconds, 0, 'the held-out set entirely from the cache');
      const meta = new AdapterStore(copy).find(ws, await modelFingerprint(tinyModel(MODEL)))!.meta;
      assert.equal(meta.updateOf, first.jobId);
    });
  });

  it('replays the share of unchanged files it is given, and never trains a deleted file again', async () => {
    const copy = copyOf(store);
    const gone = trainingFile(ws, 1);
    await withEdits(ws, { [trainingFile(ws, 0)]: (t) => t.replace('module', 'edited module'), [gone]: () => undefined }, async () => {
      const plans: UpdateSummary[] = [];
      await run(ws, copy, { update: true, replayShare: 0.5 }, plans);
      const p = plans[0]!;
      assert.ok(!('none' in p));
      // 10 files: 1 held out, 1 deleted, 1 edited, 7 unchanged training files; half of them replayed.
      assert.deepEqual({ changed: p.changed, replayed: p.replayed, unchanged: p.unchanged, deleted: p.deleted }, { changed: 1, replayed: 4, unchanged: 7, deleted: 1 });
      const meta = new AdapterStore(copy).find(ws, await modelFingerprint(tinyModel(MODEL)))!.meta;
      assert.equal(meta.files![gone], undefined, 'the deleted file is not among the new adapter\'s files');
    });
  });

  it('resumes after being stopped, with the same training as without the stop', async () => {
    await withEdits(ws, { [trainingFile(ws, 2)]: (t) => `${t}\n// one more line\nexport const later = 1;\n` }, async () => {
      const straight = await run(ws, copyOf(store), { update: true, replayShare: 0.5 });
      const stopped = copyOf(store);
      const abort = new AbortController();
      await expectCode(run(ws, stopped, { update: true, replayShare: 0.5, signal: abort.signal, onProgress: (p) => p.step >= 3 && abort.abort() }), 'CANCELLED');
      const rec = new JobRecordStore(stopped).load('last');
      assert.equal(rec.settings?.update, true, 'the record says it is an update');
      sameTraining(straight, await run(ws, stopped, { resumeJobId: rec.jobId }));
    });
  });

  it('resumes from the command line after the device process is killed (kill -9) mid-update', async () => {
    const cli = (store: string, ...args: string[]): string[] => [DEVICE_CLI, 'finetune', '--model', tinyModel(MODEL), '--store', store, ...args, '--json'];
    const result = (out: string): { steps: number; trainTokens: number; heldOutLossAfter: number } => JSON.parse(out.trim().split('\n').pop()!);
    await withEdits(ws, { [trainingFile(ws, 3)]: (t) => `${t}\nexport const killedLater = 2;\n` }, async () => {
      const straight = spawnSync(process.execPath, cli(copyOf(store), '--workspace', ws, '--update', '--replay', '1'), { encoding: 'utf8' });
      assert.equal(straight.status, 0, straight.stderr);
      const killedStore = copyOf(store);
      const device = spawn(process.execPath, cli(killedStore, '--workspace', ws, '--update', '--replay', '1'), { stdio: ['ignore', 'pipe', 'pipe'] });
      let seen = '';
      await new Promise<void>((resolve, reject) => {
        const watch = (b: Buffer): void => {
          seen += b.toString();
          // Killed once it trains: the job has an id, a record and a step-0 checkpoint on the server.
          if (/training/.test(seen) && device.exitCode === null && !device.killed) {
            device.kill('SIGKILL');
            resolve();
          }
        };
        device.stdout.on('data', watch);
        device.stderr.on('data', watch);
        device.on('exit', () => !device.killed && reject(new Error(`the update ended before it was killed: ${seen}`)));
      });
      await new Promise((r) => device.once('exit', r));
      const resumed = spawnSync(process.execPath, cli(killedStore, '--resume', 'last'), { encoding: 'utf8' });
      assert.equal(resumed.status, 0, resumed.stderr);
      sameTraining(result(straight.stdout), result(resumed.stdout));
    });
  });

  it('with no adapter yet is a full job, and says so', async () => {
    const plans: UpdateSummary[] = [];
    const r = await run(ws, tmpDir('update-none'), { update: true }, plans);
    assert.deepEqual(plans, [{ none: 'no adapter of this workspace for this model yet' }]);
    assert.equal(r.heldOutLossBefore > first.heldOutLossAfter, true, 'from the model alone');
  });
});
