import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');
/** Where the product's and the tests' sources live. */
const ROOMS = ['common', 'extension', 'server', 'webview', 'harness', 'bench', 'scripts', 'test', '.ci'];
/**
 * A repository path as comments write it: a room, then a file with its
 * extension (out/... and .cache/... are built at run time), or a path into the
 * team's shared folder, which is not in the repository (a clean clone lacks it).
 */
const PATH_IN_TEXT = /(?<![\w./-])((?:\.\.\/)*shared\/docs\/[\w./-]+|(?:docs|server|common|extension|test|bench|harness|scripts|webview)\/[\w./-]+\.(?:ts|md|cpp|hpp|sh|json|yml|yaml|conf))\b/g;

function sources(dir: string): string[] {
  const at = path.join(ROOT, dir);
  if (!fs.existsSync(at)) return [];
  return fs.readdirSync(at, { withFileTypes: true, recursive: true })
    // Caches (bench/.cache: the peer's llama.cpp checkout, built here) are not the team's sources.
    .filter((e) => e.isFile() && /\.(ts|cpp|hpp|sh|js)$/.test(e.name) && !e.parentPath.includes('node_modules') && !e.parentPath.includes(`${path.sep}.cache`))
    .map((e) => path.join(e.parentPath, e.name));
}

describe('the house', () => {
  it('every repository path a source file names exists (doc comments point at real files)', () => {
    const missing: string[] = [];
    let seen = 0;
    for (const file of ROOMS.flatMap(sources)) {
      const text = fs.readFileSync(file, 'utf8');
      for (const m of text.matchAll(PATH_IN_TEXT)) {
        const named = m[1]!;
        if (named.includes('/.cache/')) continue;
        seen++;
        const candidates = [path.join(ROOT, named), path.join(path.dirname(file), named)];
        if (!candidates.some((c) => fs.existsSync(c))) missing.push(`${path.relative(ROOT, file)}: ${named}`);
      }
    }
    assert.ok(seen > 50, `read ${seen} paths`);
    assert.deepEqual(missing, []);
  });
});
