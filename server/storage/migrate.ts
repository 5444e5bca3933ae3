import { FileStore } from './file/FileStore';
import type { PgStore } from './pg/PgStore';

/** What a migration copied. */
export interface MigrationReport {
  users: number;
  jobs: number;
  checkpoints: number;
  adapters: number;
  heads: number;
}

/**
 * Copies a data folder (the file store) into a PostgreSQL store as it is:
 * users with their token hashes (tokens keep working), every job's record,
 * its two newest checkpoints and its adapter, and the model heads with their
 * uploaders. What the database already holds is left as it is, so running
 * it again copies only what is new. The folder is only read.
 */
export async function migrateFolder(dir: string, to: PgStore, progress: (line: string) => void = () => undefined): Promise<MigrationReport> {
  const from = new FileStore(dir);
  const report: MigrationReport = { users: 0, jobs: 0, checkpoints: 0, adapters: 0, heads: 0 };
  for (const u of from.users.records()) {
    await to.users.importRecord(u);
    report.users++;
  }
  for (const owner of from.jobs.owners()) {
    for (const rec of await from.jobs.list(owner)) {
      const checkpoints = await from.jobs.readCheckpoints(rec);
      const adapter = await from.jobs.readAdapter(rec);
      await to.jobs.importJob(rec, checkpoints, adapter);
      report.jobs++;
      report.checkpoints += checkpoints.length;
      if (adapter) report.adapters++;
      progress(`job ${rec.id}: ${checkpoints.length} checkpoints${adapter ? ', adapter' : ''}`);
    }
  }
  for (const { key, uploadedBy } of from.heads.storedHeads()) {
    const head = await from.heads.load(key);
    await to.heads.save(key, head.rows, head.cols, head.norm, head.halves, uploadedBy);
    report.heads++;
  }
  await to.users.reload();
  return report;
}
