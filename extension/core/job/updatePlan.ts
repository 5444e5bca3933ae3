import { createHash } from 'node:crypto';
import { decodeAdapterSliced } from '../../../common/AdapterFile';
import { jobShape, parameterNames } from '../../../common/AdapterConfig';
import type { JobConfig } from '../../../common/messages';
import { MobiError } from '../MobiError';
import type { AdapterMetadata } from '../store/AdapterStore';
import { readAdapterFile } from '../store/readAdapterFile';
import { Dataset, heldOutFiles, keepTrainSequences } from '../workspace/dataset';
import { sequenceKey } from './ActivationCache';
import type { ScannedFile } from '../workspace/scanWorkspace';

/** A file's content digest as an adapter keeps it: sha256 of its text, the first 32 hex digits. */
export function fileDigest(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

/** The digests of a scan's files, by path relative to the workspace. */
export function fileDigests(files: ScannedFile[]): Record<string, string> {
  return Object.fromEntries(files.map((f) => [f.path, fileDigest(f.text)]));
}

/** How far the workspace has moved from what an adapter was trained on. */
export interface Staleness {
  /** Files new or edited since. */
  changed: string[];
  /** Files gone since (deleted, renamed away, or now ignored). */
  deleted: string[];
  unchanged: string[];
}

/** Compares the workspace's files (path → digest) with an adapter's. */
export function staleness(now: Record<string, string>, before: Record<string, string>): Staleness {
  const changed: string[] = [];
  const unchanged: string[] = [];
  for (const [p, digest] of Object.entries(now)) (before[p] === digest ? unchanged : changed).push(p);
  return { changed, unchanged, deleted: Object.keys(before).filter((p) => !(p in now)) };
}

/** What an update trains on and holds out. */
export interface UpdatePlan {
  /** The files the dataset is built from, in this order: changed training files, replayed ones (most wanted first), held-out ones. */
  files: ScannedFile[];
  /** The whole workspace's held-out files (a full job's split, so that an update measures what a full job measures). */
  heldOut: Set<string>;
  changed: number;
  replayed: number;
  unchanged: number;
  deleted: number;
}

/** Rank of a file in the replay order: a seeded hash of its path, stable across updates. */
function replayRank(path: string, seed: number): number {
  return createHash('sha256').update(`${seed}:replay:${path}`).digest().readUInt32BE(0);
}

/**
 * The files of an update: the training files new or edited since the adapter,
 * then `replayShare` of the unchanged training files (a seeded choice), then
 * the held-out files of the whole workspace's split. A deleted or renamed
 * file is not trained on again (it is no longer in the scan).
 */
export function planUpdate(files: ScannedFile[], before: Record<string, string>, o: { replayShare: number; seed: number; heldOutFraction: number }): UpdatePlan {
  const digests = fileDigests(files);
  const s = staleness(digests, before);
  const held = new Set(heldOutFiles(files, o).map((f) => f.path));
  const changedSet = new Set(s.changed);
  const train = files.filter((f) => !held.has(f.path));
  const changed = train.filter((f) => changedSet.has(f.path));
  const unchanged = train.filter((f) => !changedSet.has(f.path)).sort((a, b) => replayRank(a.path, o.seed) - replayRank(b.path, o.seed));
  const replay = unchanged.slice(0, Math.round(unchanged.length * o.replayShare));
  return {
    files: [...changed, ...replay, ...files.filter((f) => held.has(f.path))],
    heldOut: held, changed: changed.length, replayed: replay.length, unchanged: unchanged.length, deleted: s.deleted.length,
  };
}

/**
 * An update's job config and starting values: the adapter's own job config
 * (its side network's shape, layers, bits and sequence length) with this
 * update's steps and mode; the parameters the server trains, in
 * parameterNames order (job/create's payload with initFromAdapter); and, in
 * label-private mode, the adapter's head update, which stays on this computer.
 */
export async function adapterStart(
  file: string, fingerprint: string, model: { hiddenSize: number; vocabularySize: number }, maxBytes: number,
  labelPrivate: boolean,
): Promise<{ config: JobConfig; values: Float32Array; head?: { a: Float32Array; b: Float32Array } }> {
  let contents;
  try {
    contents = await decodeAdapterSliced(await readAdapterFile(file, maxBytes), fingerprint);
  } catch (err) {
    throw MobiError.from(err);
  }
  const job = contents.header.config.job;
  const { initFromBackbone: _unused, labelPrivate: _mode, ...rest } = job;
  const config: JobConfig = { ...rest, ...(labelPrivate ? { labelPrivate: true } : {}), initFromAdapter: true };
  const names = parameterNames(jobShape(config, model));
  const sizes = names.map((n) => contents.tensors.get(n)?.data.length ?? -1);
  if (sizes.some((n) => n < 0)) throw new MobiError('ADAPTER_CORRUPT', 'The workspace\'s adapter lacks parameters of its own side network; start a new job.');
  const values = new Float32Array(sizes.reduce((a, b) => a + b, 0));
  let at = 0;
  for (const n of names) {
    values.set(contents.tensors.get(n)!.data, at);
    at += contents.tensors.get(n)!.data.length;
  }
  // Label-private: the head update starts here from the adapter's, and stays here.
  const [a, b] = [contents.tensors.get('head_a')?.data, contents.tensors.get('head_b')?.data];
  const head = labelPrivate && config.headRank && a && b ? { a, b } : undefined;
  return { config, values, head };
}

/** The adapter an update starts from, and why there is none (then the job is a full one). */
export function updateSource(found: { file: string; meta: AdapterMetadata } | undefined): { file: string; meta: AdapterMetadata & { files: Record<string, string> } } | { none: string } {
  if (!found) return { none: 'no adapter of this workspace for this model yet' };
  if (!found.meta.files) return { none: 'the workspace\'s adapter does not list the files it was trained on (it predates updates)' };
  return found as { file: string; meta: AdapterMetadata & { files: Record<string, string> } };
}

/** An update ready to build its dataset: its plan, the adapter it starts from and (a new job) its config and starting values. */
export interface PreparedUpdate {
  plan: UpdatePlan;
  from: { file: string; meta: AdapterMetadata & { files: Record<string, string> } };
  start?: { config: JobConfig; values: Float32Array; head?: { a: Float32Array; b: Float32Array } };
}

/**
 * What an update of `found` (the workspace's adapter for this model) trains
 * on, and where it starts; `{ none }` says why it is a full job instead.
 * UP_TO_DATE when no training file changed (a resumed update goes on).
 */
export async function prepareUpdate(
  found: { file: string; meta: AdapterMetadata } | undefined, files: ScannedFile[],
  a: { fingerprint: string; model: { hiddenSize: number; vocabularySize: number }; maxBytes: number; resumed: boolean },
  o: { replayShare: number; seed: number; heldOutFraction: number; labelPrivate: boolean },
): Promise<PreparedUpdate | { none: string }> {
  const from = updateSource(found);
  if ('none' in from) return from;
  const start = a.resumed ? undefined : await adapterStart(from.file, a.fingerprint, a.model, a.maxBytes, o.labelPrivate);
  // The adapter's own split (its seed): what it held out stays held out.
  const plan = planUpdate(files, from.meta.files, { ...o, seed: start?.config.seed ?? o.seed });
  if (plan.changed === 0 && !a.resumed) {
    throw new MobiError('UP_TO_DATE', `No file fine-tuned on has changed since the adapter of ${from.meta.createdAt.slice(0, 10)} (${plan.deleted} deleted): it is up to date.`);
  }
  return { plan, from, start };
}

/** How far behind a workspace's adapter is. */
export interface AdapterBehind {
  /** Files new or edited since the adapter, and files gone since. */
  changed: number;
  deleted: number;
  /** When the adapter was made (ISO), and whole days since. */
  since: string;
  days: number;
}

/** The workspace's files (path → digest) against its adapter's: undefined when there is no adapter, or one that does not list its files. */
export function adapterBehind(meta: AdapterMetadata | undefined, now: Record<string, string>, at = Date.now()): AdapterBehind | undefined {
  if (!meta?.files) return undefined;
  const s = staleness(now, meta.files);
  return { changed: s.changed.length, deleted: s.deleted.length, since: meta.createdAt, days: Math.max(0, Math.floor((at - Date.parse(meta.createdAt)) / 86_400_000)) };
}

/** Most training sequences an adapter lists (the newest kept). */
const MAX_LISTED_SEQUENCES = 200_000;

/** A training sequence's key as an adapter lists it: the first 16 hex digits of its tokens' hash (its inputs and targets). */
function listedKey(seq: Int32Array): string {
  return sequenceKey(seq).slice(0, 16);
}

/**
 * An update's training sequences: of the changed files (the first
 * `changedFiles` training files), only those the adapter was not trained on
 * (a sequence before an edit keeps its tokens); of the replayed files, all.
 * UP_TO_DATE when the changes left no new sequence.
 */
export function novelSequences(data: Dataset, changedFiles: number, trained: string[] | undefined): Dataset {
  if (!trained) return data;
  const seen = new Set(trained);
  const changedSequences = data.trainFileSequences.slice(0, changedFiles).reduce((a, b) => a + b, 0);
  const out = keepTrainSequences(data, (i, s) => i >= changedSequences || !seen.has(listedKey(s)));
  if (out.train.length === data.train.length - changedSequences) {
    throw new MobiError('UP_TO_DATE', 'The changed files hold no code the adapter was not trained on already: it is up to date.');
  }
  return out;
}

/** The training sequences an adapter lists: this job's, then the earlier adapter's others, the newest first. */
export function listedSequences(data: Dataset, earlier: string[] = []): string[] {
  const mine = data.train.map(listedKey);
  const have = new Set(mine);
  return [...mine, ...earlier.filter((k) => !have.has(k))].slice(0, MAX_LISTED_SEQUENCES);
}
