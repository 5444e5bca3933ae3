import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as semver from 'semver';

const ROOT = path.resolve(__dirname, '..', '..', '..', '..');

interface LockedPackage {
  version?: string;
  engines?: Record<string, string> | string[];
  hasInstallScript?: boolean;
  optional?: boolean;
  os?: string[];
}

function readJson<T>(file: string): T {
  return JSON.parse(fs.readFileSync(path.join(ROOT, file), 'utf8')) as T;
}

/** npm's own settings that a project .npmrc may hold; anything else makes npm warn on every command. */
const NPM_PROJECT_SETTINGS = new Set(['save-exact', 'engine-strict', 'fund', 'audit', 'strict-allow-scripts', 'allow-scripts-pin']);

describe('The install', () => {
  const pkg = readJson<{ engines: { node: string }; allowScripts: Record<string, boolean> }>('package.json');
  const lock = readJson<{ packages: Record<string, LockedPackage> }>('package-lock.json');

  it('engines.node is true: every locked package, development tools included, runs on each Node version it admits', () => {
    const ours = pkg.engines.node;
    const floor = semver.minVersion(ours);
    assert.ok(floor, `engines.node ${ours} has a lowest version`);
    const probes = [floor.version, '20.20.0', '22.12.0', '24.0.0'].filter((v) => semver.satisfies(v, ours));
    const refused: string[] = [];
    for (const [where, p] of Object.entries(lock.packages)) {
      if (!where || !p.engines || Array.isArray(p.engines) || !p.engines.node) continue;
      for (const v of probes) if (!semver.satisfies(v, p.engines.node)) refused.push(`${where} wants ${p.engines.node}, not ${v}`);
    }
    assert.deepEqual(refused, []);
  });

  it('every dependency with an install script is allowed or denied in package.json, so npm does not warn', () => {
    const unreviewed = Object.entries(lock.packages)
      .filter(([where, p]) => where && p.hasInstallScript)
      .map(([where]) => where.slice(where.lastIndexOf('node_modules/') + 'node_modules/'.length))
      .filter((name) => !(name in pkg.allowScripts));
    assert.deepEqual(unreviewed, []);
    // onnxruntime-node's script fetches CUDA libraries from NuGet: never on a laptop or in CI (the GPU image runs it itself).
    assert.equal(pkg.allowScripts['onnxruntime-node'], false);
  });

  it('.npmrc holds only settings npm knows', () => {
    const keys = fs.readFileSync(path.join(ROOT, '.npmrc'), 'utf8').split('\n')
      .map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && !l.startsWith(';'))
      .map((l) => l.split('=')[0].trim());
    assert.deepEqual(keys.filter((k) => !NPM_PROJECT_SETTINGS.has(k)), []);
  });
});
