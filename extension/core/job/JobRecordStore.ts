import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { MobiError } from '../MobiError';

/** Device-side record of a job, so that a later process can resume it: ids, paths and numbers, never data. */
export interface JobRecord {
  jobId: string;
  serverUrl?: string;
  /** Absolute path of the workspace. */
  workspace: string;
  /** sha256 of the model file the job was created with. */
  fingerprint: string;
  /** Held-out loss before training, once measured (a resumed job does not measure it again). */
  heldOutLossBefore?: number;
}

/** Job records in `<store>/jobs/<jobId>.json`. */
export class JobRecordStore {
  constructor(private readonly storeDir: string) {}

  private file(jobId: string): string {
    return path.join(this.storeDir, 'jobs', `${jobId}.json`);
  }

  save(rec: JobRecord): void {
    writeFileAtomic(this.file(rec.jobId), `${JSON.stringify(rec, null, 2)}\n`);
  }

  /** The record of `jobId`; NO_SUCH_JOB when this device has none. */
  load(jobId: string): JobRecord {
    try {
      return JSON.parse(fs.readFileSync(this.file(jobId), 'utf8')) as JobRecord;
    } catch (err) {
      throw new MobiError('NO_SUCH_JOB', `No record of job ${jobId} on this device.`, { cause: err });
    }
  }
}
