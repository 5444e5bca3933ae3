import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SeededRandom } from '../../common/SeededRandom';

/**
 * Writes a small generated codebase: TypeScript-like modules with repeated
 * idioms (so a side network has something to learn). Content is generated
 * here, from a seed.
 */
export function makeWorkspace(seed: number, files = 8, linesPerFile = 60): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mobillm-ws-${seed}-`));
  const rng = new SeededRandom(seed);
  const nouns = ['user', 'order', 'item', 'cart', 'price', 'token', 'layer', 'batch', 'model', 'file'];
  const verbs = ['load', 'save', 'count', 'find', 'update', 'remove', 'check', 'build'];
  for (let f = 0; f < files; f++) {
    const lines: string[] = [`// module ${f} of a generated sample`, `import { assert } from './assert';`, ''];
    while (lines.length < linesPerFile) {
      const n = nouns[rng.int(nouns.length)]!;
      const v = verbs[rng.int(verbs.length)]!;
      const N = n[0]!.toUpperCase() + n.slice(1);
      lines.push(`export function ${v}${N}(${n}Id: number, options: ${N}Options): ${N}Result {`);
      lines.push(`  const ${n} = registry.get${N}(${n}Id);`);
      lines.push(`  if (${n} === undefined) throw new Error('no such ${n}: ' + ${n}Id);`);
      lines.push(`  return { ok: true, value: ${n}.${v}(options), count: ${rng.int(100)} };`);
      lines.push('}', '');
    }
    fs.writeFileSync(path.join(dir, `module${f}.ts`), lines.join('\n'));
  }
  return dir;
}

/** Directories tmpDir made in this process: removed when it exits (MOBILLM_KEEP_TEST_DIRS=1 keeps them, to look into a failure). */
const made = new Set<string>();
process.on('exit', () => {
  if (process.env.MOBILLM_KEEP_TEST_DIRS === '1') return;
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
});

export function tmpDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mobillm-${prefix}-`));
  made.add(dir);
  return dir;
}

/** Every file below `dir`, recursively (for checking what a server wrote). */
export function listFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}
