import * as fs from 'node:fs';
import * as path from 'node:path';

/** Where the benchmarks' results live (committed: the README quotes them). */
export const RESULTS_DIR = path.resolve(__dirname, '..', '..', '..', 'bench', 'results');

/** Writes one benchmark's result as bench/results/<name> (JSON, two-space indent, a final newline) and returns its path. */
export function writeResult(name: string, result: unknown): string {
  const file = path.join(RESULTS_DIR, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}
