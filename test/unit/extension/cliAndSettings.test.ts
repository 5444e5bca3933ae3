import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HOST_SETTINGS, JOB_SETTINGS, SCAN_SETTINGS, SettingRow } from '../../../common/jobSettings';
import { resumeCommand } from '../../../extension/cli/finetuneCommand';
import { packageVersion } from '../../../common/packageRoot';
import { ProgressDisplay } from '../../../extension/cli/ProgressDisplay';
import type { JobProgress } from '../../../extension/core/job/JobProgress';
import { tinyModel } from '../../helpers/models';
import { DEVICE_CLI, SERVER_CLI } from '../../../harness/serverProcess';
import { tmpDir } from '../../helpers/workspaces';

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|cpp|hpp)$/.test(e.name)).map((e) => path.join(e.parentPath, e.name));
}

describe('CLI arguments and VS Code settings', () => {
  it('package.json declares exactly the settings of the tables: keys, types, defaults, enums, ranges and descriptions', () => {
    const props = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).contributes.configuration.properties as Record<string, Record<string, unknown>>;
    const rows: SettingRow[] = [...Object.values(JOB_SETTINGS), ...Object.values(SCAN_SETTINGS), ...Object.values(HOST_SETTINGS)].filter((r: SettingRow) => r.key);
    assert.deepEqual(Object.keys(props).sort(), rows.map((r) => `mobillm.${r.key!}`).sort(), 'the same keys');
    for (const row of rows) {
      const p = props[`mobillm.${row.key!}`]!;
      const expected: Record<string, unknown> = {
        type: { int: 'number', number: 'number', oneOf: 'number', boolean: 'boolean', string: 'string', strings: 'array' }[row.kind],
        [row.markdown ? 'markdownDescription' : 'description']: row.doc,
      };
      const fallback = (row.kind === 'boolean' ? row.hostDefault : undefined) ?? row.default;
      if (fallback !== undefined) expected.default = fallback; // a setting without one is unset until given
      if (row.kind === 'int' || row.kind === 'number') Object.assign(expected, { minimum: row.min, maximum: row.max });
      if (row.kind === 'oneOf' || (row.kind === 'string' && row.values)) Object.assign(expected, { enum: row.values }, row.valueDocs ? { enumDescriptions: row.valueDocs } : {});
      if (row.kind === 'strings') expected.items = { type: 'string' };
      assert.deepEqual(p, expected, row.key);
    }
  });

  it('every setting default is written once, in the table', () => {
    const product = ['extension', 'server', 'common', 'webview'].flatMap((d) => sourceFiles(d)).filter((f) => !f.endsWith('jobSettings.ts'));
    const text = product.map((f) => fs.readFileSync(f, 'utf8')).join('\n');
    // Each numeric default of the tables, as a second home would write it: `name: value` or `NAME = value`, in each
    // way TypeScript spells the number (plain, grouped by _, with an exponent). Defaults of 0 and 1 are left out (too common
    // to tell), and so are one-of settings, whose values name choices (`sideNetwork: 2` is the design, not its default).
    const rows = { ...JOB_SETTINGS, ...SCAN_SETTINGS, ...HOST_SETTINGS } as Record<string, SettingRow>;
    const literals = Object.entries(rows).flatMap(([name, row]) => {
      const v = row.default;
      if (typeof v !== 'number' || v === 0 || v === 1 || row.kind === 'oneOf') return [];
      const spellings = [...new Set([String(v), v.toLocaleString('en-US').replace(/,/g, '_'), v.toExponential().replace('e+', 'e')])];
      const constant = name.replace(/([A-Z])/g, '_$1').toUpperCase();
      return spellings.flatMap((n) => [`${name}: ${n}`, `${constant} = ${n}`]);
    });
    assert.ok(literals.includes('headRank: 16') && literals.includes('COMPLETION_PREFIX_CHARS = 1500') && literals.includes('maxFileBytes: 524_288') && literals.includes('learningRate: 6e-3'), 'the list is derived from the tables');
    const escape = (x: string): string => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    for (const literal of literals) assert.ok(!new RegExp(`(?<![\\w.])${escape(literal)}(?![\\w.])`).test(text), `a second literal: ${literal}`);
  });

  it('refuses each bad flag at the edge with BAD_ARGUMENT naming the flag and its range, before creating anything', () => {
    const store = tmpDir('cli-store');
    const cases: [string[], RegExp][] = [
      [['--seq-len', '0'], /--seq-len must be a whole number from 8 to 4096/],
      [['--seq-len', '4'], /--seq-len must be a whole number from 8 to 4096/],
      [['--seq-len', '100000'], /--seq-len/],
      [['--batch', '0'], /--batch must be a whole number from 1 to 64/],
      [['--lr', '-1'], /--lr must be a number from/],
      [['--epochs', '0'], /--epochs must be a whole number from 1 to 1000/],
      [['--bits', '3'], /--bits must be 4, 8 or 16/],
      [['--seed', 'x'], /--seed must be a number/],
      [['--side-network', '3'], /--side-network must be 1 or 2/],
      [['--tap-every', '0'], /--tap-every must be a whole number from 1 to 1023/],
      [['--join-after-norm', '--label-private'], /--join-after-norm is for the standard mode/],
      [['--join-after-norm', '--server', 'ws://127.0.0.1:9', '--token', 't'], /label-private training \(the default with a team server\).*turn --label-private off/],
      [['--init-from-backbone', '--random-init'], /cannot both be given/],
      [['--head-rank', '17'], /--head-rank must be a whole number from 0 to 16/],
    ];
    for (const [args, message] of cases) {
      const r = spawnSync(process.execPath, [DEVICE_CLI, 'finetune', '--workspace', ROOT, '--store', store, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 1, args.join(' '));
      assert.match(r.stderr, /^error\[BAD_ARGUMENT\]: /, args.join(' '));
      assert.match(r.stderr, message);
      assert.ok(!/Usage:/.test(r.stderr), 'no help text dumped');
    }
    assert.deepEqual(fs.existsSync(store) ? fs.readdirSync(store) : [], [], 'nothing created');
  });

  it('--version prints the package version (both CLIs); resume commands are exact; model info reads as a summary, --json for scripts', () => {
    const r = spawnSync(process.execPath, [DEVICE_CLI, '--version'], { encoding: 'utf8' });
    assert.equal(r.stdout.trim(), packageVersion());
    assert.equal(spawnSync(process.execPath, [SERVER_CLI, '--version'], { encoding: 'utf8' }).stdout.trim(), packageVersion());
    const model = tinyModel({ layers: 2, embd: 32, heads: 2 });
    const info = spawnSync(process.execPath, [DEVICE_CLI, 'model', 'info', model], { encoding: 'utf8' });
    assert.match(info.stdout, /2 layers, hidden size 32/);
    assert.equal(JSON.parse(spawnSync(process.execPath, [DEVICE_CLI, 'model', 'info', model, '--json'], { encoding: 'utf8' }).stdout).layers, 2);
    const data = tmpDir('users');
    const add = spawnSync(process.execPath, [SERVER_CLI, 'users', 'add', 'kim', '--data', data], { encoding: 'utf8' });
    assert.match(add.stdout.trim(), /^kim\.[\w-]+$/, 'the token alone on stdout, for scripts');
    assert.match(add.stderr, /shown once/);
    assert.equal(resumeCommand('abc', '/x'), 'mobillm finetune --resume abc --store /x');
  });

  it('progress off a terminal: a line per phase change or per 10 s, never the same line twice', () => {
    const lines: string[] = [];
    const out = { isTTY: false, write: (s: string) => lines.push(s) } as unknown as NodeJS.WriteStream;
    const d = new ProgressDisplay(out);
    const p: JobProgress = { phase: 'connecting', step: 0, totalSteps: 10, sequencesDone: 0, tokensDone: 0, deviceTokensPerSecond: 0, bytesSent: 0, deviceRssBytes: 0, lossHistory: [] };
    for (let i = 0; i < 57; i++) d.update({ ...p });
    d.update({ ...p, phase: 'training', step: 1 });
    d.update({ ...p, phase: 'training', step: 2 });
    d.message('hello');
    assert.deepEqual(lines.map((l) => l.split('  ')[0]), ['connecting', 'training', 'hello\n']);
  });
});
