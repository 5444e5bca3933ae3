import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import type { JobConfig } from '../../../common/messages';
import { UUID_PATTERN } from '../../../common/schema';
import { MobiError } from '../MobiError';
import type { JobSettings } from '../../../common/jobSettings';
import type { JobPhase } from './JobProgress';

/** Device-side record of a job, so that a later process can resume it: ids, paths, settings and numbers, never data. */
export interface JobRecord {
  jobId: string;
  serverUrl?: string;
  /** Absolute path of the workspace. */
  workspace: string;
  /** The model as it was given (a path or an hf: URI). */
  model?: string;
  /** sha256 of the model file the job was created with. */
  fingerprint: string;
  /** The settings the job was created with; a resumed job keeps them. */
  settings?: JobSettings;
  /** The job's configuration as the server has it (total steps included). */
  config?: JobConfig;
  /** Held-out loss before training, once measured (a resumed job does not measure it again). */
  heldOutLossBefore?: number;
  heldOutLossAfter?: number;
  /** Where the job stood when this device last saw it. */
  phase?: JobPhase;
  step?: number;
  updatedAt?: string;
}

/** Job records in `<store>/jobs/<jobId>.json`. */
export class JobRecordStore {
  constructor(private readonly storeDir: string) {}

  /** The record's file; a name that is not a job id (a UUID) never reaches the file system. */
  private file(jobId: string): string {
    if (!UUID_PATTERN.test(jobId)) throw new MobiError('NO_SUCH_JOB', `"${jobId.slice(0, 40)}" is not a job id (see "mobillm jobs").`);
    return path.join(this.storeDir, 'jobs', `${jobId}.json`);
  }

  save(rec: JobRecord): void {
    writeFileAtomic(this.file(rec.jobId), `${JSON.stringify({ ...rec, updatedAt: new Date().toISOString() }, null, 2)}\n`);
  }

  /** Every record on this device, the most recently updated first. */
  list(): JobRecord[] {
    let names: string[];
    try {
      names = fs.readdirSync(path.join(this.storeDir, 'jobs')).filter((n) => n.endsWith('.json'));
    } catch {
      return [];
    }
    const out: JobRecord[] = [];
    for (const n of names) {
      try {
        out.push(JSON.parse(fs.readFileSync(path.join(this.storeDir, 'jobs', n), 'utf8')) as JobRecord);
      } catch {
        // a damaged record is skipped here; load() reports it
      }
    }
    return out.sort((a, b) => (b.updatedAt ?? '').localeCompare(a.updatedAt ?? ''));
  }

  /** The record of `jobId` ('last': the most recently updated); NO_SUCH_JOB when this device has none. */
  load(jobId: string): JobRecord {
    if (jobId === 'last') {
      const last = this.list()[0];
      if (!last) throw new MobiError('NO_SUCH_JOB', 'This device has no fine-tuning job to resume yet.');
      return last;
    }
    const file = this.file(jobId);
    try {
      return JSON.parse(fs.readFileSync(file, 'utf8')) as JobRecord;
    } catch (err) {
      throw new MobiError('NO_SUCH_JOB', `No record of job ${jobId} on this device.`, { cause: err });
    }
  }
}
