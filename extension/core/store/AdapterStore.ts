import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdapterHeader, decodeAdapterSliced } from '../../../common/AdapterFile';
import { writeFileAtomic, writeFileAtomicSliced } from '../../../common/atomicWrite';
import { MobiError } from '../MobiError';

export interface AdapterMetadata {
  workspace: string;
  modelFingerprint: string;
  jobId: string;
  createdAt: string;
  steps: number;
  heldOutLossBefore: number;
  heldOutLossAfter: number;
  /** The workspace's files when the adapter was made: path → content digest (updatePlan.ts); what an update compares with. */
  files?: Record<string, string>;
  /** Seconds of training per step, for an update's time budget. */
  trainSecondsPerStep?: number;
  /** The training sequences the adapter was trained on (updatePlan.ts listedSequences): an update trains only the new ones of a changed file. */
  sequences?: string[];
  /** The job of the adapter this one updated. */
  updateOf?: string;
}

/** Trained adapters on the device: `<store>/adapters/<workspace hash>/<model fingerprint>/`. */
export class AdapterStore {
  constructor(private readonly root: string) {}

  dir(workspace: string, fingerprint: string): string {
    const ws = createHash('sha256').update(path.resolve(workspace)).digest('hex').slice(0, 16);
    return path.join(this.root, 'adapters', ws, fingerprint);
  }

  /** Verifies the adapter against the model, then stores it with its metadata (both in slices: the event loop stays free). Returns the adapter's path and its verified header. */
  async save(bytes: Uint8Array, meta: AdapterMetadata): Promise<{ file: string; header: AdapterHeader }> {
    let header: AdapterHeader;
    try {
      header = (await decodeAdapterSliced(bytes, meta.modelFingerprint)).header;
    } catch (err) {
      throw MobiError.from(err);
    }
    const dir = this.dir(meta.workspace, meta.modelFingerprint);
    const file = path.join(dir, 'adapter.mobi');
    await writeFileAtomicSliced(file, bytes);
    writeFileAtomic(path.join(dir, 'adapter.json'), `${JSON.stringify(meta, null, 2)}\n`);
    return { file, header };
  }

  /** The stored adapter for a workspace and model, if any. */
  find(workspace: string, fingerprint: string): { file: string; meta: AdapterMetadata } | undefined {
    const dir = this.dir(workspace, fingerprint);
    try {
      const meta = JSON.parse(fs.readFileSync(path.join(dir, 'adapter.json'), 'utf8')) as AdapterMetadata;
      const file = path.join(dir, 'adapter.mobi');
      return fs.existsSync(file) ? { file, meta } : undefined;
    } catch {
      return undefined;
    }
  }
}
