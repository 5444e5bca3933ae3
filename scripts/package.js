#!/usr/bin/env node
// Packages the extension for one platform (this machine's; the native addon is
// built here): the extension's JavaScript bundled into dist/ by esbuild, plus
// only the native files that platform runs. Writes mobillm-vscode-<target>.vsix.
//
//   node scripts/package.js            (after "npm run build")
//
// What goes in, and why: .vscodeignore (everything else under node_modules is left out).
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const ROOT = path.resolve(__dirname, '..');

// The native addon is built on this machine; .vscodeignore names linux-x64's native files.
const TARGETS = ['linux-x64'];

function fail(message) {
  process.stderr.write(`error[PACKAGE]: ${message}\n`);
  process.exit(1);
}

const target = `${process.platform}-${process.arch}`;
if (!TARGETS.includes(target)) fail(`the native addon builds on linux-x64 only; this machine is ${target}.`);
const addon = path.join(ROOT, 'out', 'native', 'mobillm.node');
if (!fs.existsSync(addon)) fail('out/native/mobillm.node is missing: run "npm run build" first.');

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
    execFileSync(process.execPath, [vsce, 'package', '--target', target, '--no-update-package-json',
      '--allow-missing-repository', '--no-rewrite-relative-links', '-o', out], { cwd: ROOT, stdio: 'inherit' });
  })
  .catch((err) => fail(err instanceof Error ? err.message : String(err)));
