import * as os from 'node:os';
import * as path from 'node:path';

/** The device store (adapters, job records, the default model, the embedded server's data): $MOBILLM_HOME or ~/.mobillm. */
export function defaultStoreDir(): string {
  return process.env.MOBILLM_HOME ?? path.join(os.homedir(), '.mobillm');
}
