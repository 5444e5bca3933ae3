import * as assert from 'node:assert/strict';
import { AutoUpdateState, autoUpdateBlocked, autoUpdateDue, DAY_MS, QUIET_MS } from '../../../../../extension/core/job/autoUpdate';
import { adapterBehind, fileDigest, fileDigests, listedSequences, novelSequences, planUpdate, staleness } from '../../../../../extension/core/job/updatePlan';
import { expectCode } from '../../../../helpers/expectCode';
import { Dataset, firstTrainSequences } from '../../../../../extension/core/workspace/dataset';
import { behindText, updatePlanText } from '../../../../../extension/core/text/statusText';
import type { ScannedFile } from '../../../../../extension/core/workspace/scanWorkspace';
import { heldOutFiles } from '../../../../../extension/core/workspace/dataset';

const file = (path: string, text: string): ScannedFile => ({ path, text, bytes: text.length });

describe('updating from what changed: the plan', () => {
  const files = Array.from({ length: 20 }, (_, i) => file(`src/f${i}.ts`, `export const v${i} = ${i};\n`));
  const before = fileDigests(files);
  const o = { replayShare: 0.25, seed: 1, heldOutFraction: 0.1 };

  it('compares content digests: edits and new files changed, missing files deleted', () => {
    const now = { ...before, 'src/f1.ts': fileDigest('edited'), 'src/new.ts': fileDigest('new') };
    delete (now as Record<string, string>)['src/f2.ts'];
    const s = staleness(now, before);
    assert.deepEqual(s.changed.sort(), ['src/f1.ts', 'src/new.ts']);
    assert.deepEqual(s.deleted, ['src/f2.ts']);
    assert.equal(s.unchanged.length, 18);
  });

  it('trains the changed training files first, then the replay share of the unchanged ones, and holds out the whole workspace\'s split', () => {
    const held = new Set(heldOutFiles(files, o).map((f) => f.path));
    const editable = files.filter((f) => !held.has(f.path));
    const edited = files.map((f) => (f.path === editable[3]!.path ? file(f.path, 'changed') : f));
    const plan = planUpdate(edited, before, o);
    assert.deepEqual(plan.heldOut, held);
    assert.equal(plan.changed, 1);
    assert.equal(plan.unchanged, editable.length - 1);
    assert.equal(plan.replayed, Math.round((editable.length - 1) * 0.25));
    assert.equal(plan.files[0]!.path, editable[3]!.path, 'the changed file first');
    assert.equal(plan.files.length, 1 + plan.replayed + held.size);
    assert.ok(plan.files.slice(-held.size).every((f) => held.has(f.path)), 'the held-out files last');
    // The same replay choice every time (a seeded rank of the paths), and a larger share takes a superset.
    assert.deepEqual(planUpdate(edited, before, o).files, plan.files);
    const more = new Set(planUpdate(edited, before, { ...o, replayShare: 0.5 }).files.map((f) => f.path));
    assert.ok(plan.files.every((f) => more.has(f.path)));
  });

  it('trains only the changed files\' sequences the adapter has not seen, every replayed one, and lists what the adapter knows', async () => {
    const seq = (...t: number[]): Int32Array => Int32Array.from(t);
    const data = (train: Int32Array[], perFile: number[]): Dataset => ({
      train, trainMasked: train.map(() => undefined), heldOut: [seq(9, 9)], heldOutFim: [], trainFiles: perFile.length, heldOutFiles: 1,
      trainTokens: train.reduce((a, s) => a + s.length - 1, 0), seqLen: 4, seed: 1, trainFileSequences: perFile,
    });
    const before = data([seq(1, 2, 3), seq(3, 4, 5), seq(7, 8, 9)], [2, 1]);
    const known = listedSequences(before);
    assert.equal(known.length, 3);
    // The first file was edited after its first sequence; the second is replayed (known, but kept).
    const now = data([seq(1, 2, 3), seq(3, 4, 6), seq(7, 8, 9)], [2, 1]);
    const novel = novelSequences(now, 1, known);
    assert.deepEqual(novel.train.map((s) => [...s]), [[3, 4, 6], [7, 8, 9]]);
    assert.deepEqual(novel.trainFileSequences, [1, 1], 'each file\'s count of what is kept');
    assert.equal(novel.trainTokens, 4);
    assert.equal(novelSequences(now, 1, undefined), now, 'an adapter that lists no sequences: every sequence of the changed files');
    await expectCode(Promise.resolve().then(() => novelSequences(before, 2, known)), 'UP_TO_DATE');
    const after = listedSequences(novel, known);
    assert.equal(after.length, 4, 'the earlier sequences stay listed after the new ones');
    // Within a time budget the first sequences are kept: the changed files' come first.
    assert.deepEqual(firstTrainSequences(novel, 1).train.map((s) => [...s]), [[3, 4, 6]]);
    assert.equal(firstTrainSequences(novel, 1).trainTokens, 2);
  });

  it('says how far behind an adapter is, in files and days', () => {
    const made = '2026-12-01T10:00:00.000Z';
    const meta = { workspace: '/w', modelFingerprint: 'x', jobId: 'j', createdAt: made, steps: 1, heldOutLossBefore: 1, heldOutLossAfter: 1, files: before };
    const now = { ...before, 'src/f1.ts': fileDigest('edited') };
    const b = adapterBehind(meta, now, Date.parse(made) + 2.5 * 86_400_000)!;
    assert.deepEqual(b, { changed: 1, deleted: 0, since: made, days: 2 });
    assert.equal(behindText(b), '1 file, 2 days behind');
    assert.equal(behindText({ ...b, changed: 2, deleted: 1, days: 0 }), '3 files behind');
    assert.equal(behindText({ ...b, changed: 0 }), 'up to date');
    assert.equal(updatePlanText({ changed: 2, replayed: 3, unchanged: 12, deleted: 1, since: made }), '2 changed files, 3 of 12 unchanged ones replayed, 1 deleted (from the adapter of 2026-12-01 10:00)');
    assert.equal(updatePlanText({ none: 'no adapter yet' }), 'no adapter yet; this is a full fine-tune');
    assert.equal(adapterBehind({ ...meta, files: undefined }, now), undefined, 'an adapter that predates updates lists no files');
  });
});

describe('updating without being asked: when it is due', () => {
  const now = 10 * DAY_MS;
  const due: AutoUpdateState = {
    mode: 'idle', now, lastEditAt: now - QUIET_MS - 1, lastCompletionAt: 0, completionInFlight: false, jobRunning: false,
    behind: { changed: 2, deleted: 0, since: '', days: 1 }, lastAutoAt: undefined,
  };

  it('after a quiet period with changes', () => {
    assert.equal(autoUpdateDue(due), true);
    assert.equal(autoUpdateDue({ ...due, mode: 'daily' }), true);
  });

  it('never when off, while a job runs or a completion is served, without changes, or too soon after an edit or a completion', () => {
    assert.match(String(autoUpdateDue({ ...due, mode: 'off' })), /off/);
    assert.match(String(autoUpdateDue({ ...due, jobRunning: true })), /running/);
    assert.match(String(autoUpdateDue({ ...due, completionInFlight: true })), /completion/);
    assert.match(String(autoUpdateDue({ ...due, behind: { ...due.behind!, changed: 0 } })), /up to date/);
    assert.match(String(autoUpdateDue({ ...due, behind: undefined })), /no adapter/);
    assert.match(String(autoUpdateDue({ ...due, lastEditAt: now - 1000 })), /quiet/);
    assert.match(String(autoUpdateDue({ ...due, lastCompletionAt: now - 1000 })), /quiet/);
    // What holds an update back whatever the adapter's staleness, asked before the workspace is scanned.
    assert.equal(autoUpdateBlocked(due), undefined);
    assert.match(String(autoUpdateBlocked({ ...due, lastEditAt: now - 1000 })), /quiet/);
  });

  it('at most once a day in the daily mode', () => {
    assert.match(String(autoUpdateDue({ ...due, mode: 'daily', lastAutoAt: now - DAY_MS / 2 })), /day/);
    assert.equal(autoUpdateDue({ ...due, mode: 'daily', lastAutoAt: now - DAY_MS - 1 }), true);
    assert.equal(autoUpdateDue({ ...due, mode: 'idle', lastAutoAt: now - DAY_MS / 2 }), true, 'idle updates whenever it is quiet');
  });
});
