import * as assert from 'node:assert/strict';
import * as path from 'node:path';

/** The folders of the house whose TypeScript imports are checked (tests included). */
const ROOMS = ['common', 'extension', 'server', 'webview', 'harness', 'bench', 'test'];
const ROOT = path.resolve(__dirname, '..', '..', '..', '..');

describe('the house', function () {
  this.timeout(120_000);

  it('has no import circle anywhere, type-only imports included (dpdm over the TypeScript sources)', async () => {
    // dpdm parses the sources with its own TypeScript; type imports count (transform: false).
    const dpdm = (await import('dpdm')) as typeof import('dpdm');
    const cwd = process.cwd();
    process.chdir(ROOT);
    let tree;
    try {
      tree = await dpdm.parseDependencyTree(ROOMS.map((r) => `${r}/**/*.ts`), { transform: false, exclude: /node_modules/, skipDynamicImports: true });
    } finally {
      process.chdir(cwd);
    }
    const files = Object.keys(tree);
    assert.ok(files.some((f) => f.startsWith('server/storage/')) && files.length > 150, `dpdm read the house (${files.length} files)`);
    assert.deepEqual(dpdm.parseCircular(tree).map((c) => c.join(' -> ')), []);
  });
});
