#!/usr/bin/env node
// Packages the extension for one platform: the extension's JavaScript bundled
// into dist/ by esbuild, plus only the native files that platform runs (the
// addon and its llama.cpp libraries in out/native/<target>/, onnxruntime-node's
// and bufferutil's binaries for it). Writes mobillm-vscode-<target>.vsix.
//
//   node scripts/package.js [--target T]   (after "npm run build"; T defaults to this machine;
//                                          the addon for T is built first when it is missing)
//
// What goes in, and why: .vscodeignore (the files every target has) and the
// target's native lines added here from extension/native/targets.ts, written to
// build/vscodeignore-<target> for vsce.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const ROOT = path.resolve(__dirname, '..');

function fail(message) {
  process.stderr.write(`error[PACKAGE]: ${message}\n`);
  process.exit(1);
}

const targetsFile = path.join(ROOT, 'out', 'extension', 'native', 'targets.js');
if (!fs.existsSync(targetsFile)) fail('out/ is missing: run "npm run build" first.');
const { NATIVE_TARGETS, NATIVE_TARGET_NAMES, targetOf, addonFile, libraryExtensions } = require(targetsFile);
const arg = process.argv.includes('--target') ? process.argv[process.argv.indexOf('--target') + 1] : undefined;
const target = arg ?? targetOf(process.platform, process.arch);
if (!target || !NATIVE_TARGETS[target]) fail(`no target ${target ?? `${process.platform}-${process.arch}`}; the targets are ${NATIVE_TARGET_NAMES.join(', ')}.`);
if (!fs.existsSync(addonFile(ROOT, target))) {
  execFileSync(process.execPath, [path.join(ROOT, 'extension', 'native', 'build-addon.js'), '--target', target], { stdio: 'inherit' });
}

/** .vscodeignore plus the target's native files (vsce: a "!" line lets a path back in). */
function ignoreFile() {
  const spec = NATIVE_TARGETS[target];
  const lines = [
    `# ${target}'s native files (scripts/package.js)`,
    `!out/native/${target}/mobillm.node`,
    ...libraryExtensions(target).map((e) => `!out/native/${target}/*${e}`),
    ...(spec.onnxruntime ? [`!node_modules/onnxruntime-node/bin/napi-v6/${spec.onnxruntime}/*`] : []),
    ...(spec.bufferutil ? [`!node_modules/bufferutil/prebuilds/${spec.bufferutil}/*`] : []),
  ];
  const file = path.join(ROOT, 'build', `vscodeignore-${target}`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${fs.readFileSync(path.join(ROOT, '.vscodeignore'), 'utf8')}\n${lines.join('\n')}\n`);
  return file;
}

const DIST = path.join(ROOT, 'dist');
fs.rmSync(DIST, { recursive: true, force: true });

// node-llama-cpp is an ES module whose index loads every part of it (and its
// own native binding); the extension needs only resolveModelFile, bundled on
// its own as an ES module. `import('node-llama-cpp')` in the extension is
// pointed at that file.
const toResolver = {
  name: 'node-llama-cpp-resolver',
  setup(build) {
    build.onResolve({ filter: /^node-llama-cpp$/ }, () => ({ path: './resolveModel.mjs', external: true }));
  },
};

async function bundle() {
  const common = { bundle: true, platform: 'node', target: 'node20', legalComments: 'none', logLevel: 'warning', minify: true, keepNames: true };
  await esbuild.build({
    ...common,
    entryPoints: [path.join(ROOT, 'out', 'extension', 'vscode', 'extension.js')],
    outfile: path.join(DIST, 'extension.js'),
    format: 'cjs',
    external: ['vscode', 'onnxruntime-node', 'bufferutil', 'utf-8-validate'],
    plugins: [toResolver],
  });
  // The embedded server runs as a child process of the extension host, and trains in a worker thread of its own.
  for (const [from, to] of [[['server', 'cli', 'embedded.js'], 'embeddedServer.js'], [['server', 'training', 'pool', 'trainerWorker.js'], 'trainerWorker.js']]) {
    await esbuild.build({
      ...common,
      entryPoints: [path.join(ROOT, 'out', ...from)],
      outfile: path.join(DIST, to),
      format: 'cjs',
      external: ['onnxruntime-node', 'bufferutil', 'utf-8-validate', 'pg-native'],
    });
  }
  await esbuild.build({
    ...common,
    stdin: {
      // A file inside the package (its "exports" map offers only the whole index).
      contents: "export { resolveModelFile } from './node_modules/node-llama-cpp/dist/utils/resolveModelFile.js';",
      resolveDir: ROOT,
      loader: 'js',
    },
    outfile: path.join(DIST, 'resolveModel.mjs'),
    format: 'esm',
    // Its CommonJS dependencies call require(): give the ES module one.
    banner: { js: "import { createRequire as mobiCreateRequire } from 'node:module'; const require = mobiCreateRequire(import.meta.url);" },
    // An optional copy-on-write helper of its downloader (it copies plainly without it).
    external: ['@reflink/*'],
  });
}

bundle()
  .then(() => {
    const out = `mobillm-vscode-${target}.vsix`;
    const vsce = path.join(ROOT, 'node_modules', '@vscode', 'vsce', 'vsce');
    execFileSync(process.execPath, [vsce, 'package', '--target', target, '--no-update-package-json', '--ignoreFile', ignoreFile(),
      '--allow-missing-repository', '--no-rewrite-relative-links', '-o', out], { cwd: ROOT, stdio: 'inherit' });
  })
  .catch((err) => fail(err instanceof Error ? err.message : String(err)));
