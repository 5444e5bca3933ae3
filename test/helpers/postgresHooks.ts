import { startPostgres, TestPostgres } from '../../harness/postgres';

/**
 * Starts a PostgreSQL for the enclosing suite and removes it after; when it
 * cannot start, the suite's tests are skipped with the reason printed.
 * Returns the server (undefined until the suite runs, or when skipped).
 */
export function usePostgres(): () => TestPostgres | undefined {
  let pg: TestPostgres | undefined;
  before(async function () {
    const r = await startPostgres();
    if ('skip' in r) {
      console.log(`      skipped: ${r.skip}`);
      this.skip();
    }
    pg = r;
  });
  after(() => pg?.remove());
  return () => pg;
}
