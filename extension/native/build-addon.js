#!/usr/bin/env node
// Builds (at -O3: the side network's loops vectorise) the C++ sources of extension/native/ (addon.cpp and its parts) into
// out/native/mobillm.node with one g++
// command, against the shared libraries node-llama-cpp ships prebuilt and the
// headers of the very same llama.cpp release, taken from the git bundle inside
// the node-llama-cpp package (cloned offline into build/llama.cpp, outside git).
// Run by `npm install` (postinstall); no network, no cmake.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
const outDir = path.join(root, 'out', 'native');
const outFile = path.join(outDir, 'mobillm.node');
const sources = fs.readdirSync(__dirname).filter((f) => f.endsWith('.cpp')).sort().map((f) => path.join(__dirname, f));
const headers = fs.readdirSync(__dirname).filter((f) => f.endsWith('.hpp')).map((f) => path.join(__dirname, f));

function fail(message) {
  console.error(`error[NATIVE_BUILD]: ${message}`);
  process.exit(1);
}

function packageDir(name) {
  const dir = path.join(root, 'node_modules', name);
  if (!fs.existsSync(path.join(dir, 'package.json'))) fail(`${name} is not installed; run npm ci first.`);
  return dir;
}

const nlcDir = packageDir('node-llama-cpp');
const info = JSON.parse(fs.readFileSync(path.join(nlcDir, 'llama', 'llama.cpp.info.json'), 'utf8'));
const libDir = path.join(root, 'node_modules', '@node-llama-cpp', 'linux-x64', 'bins', 'linux-x64');
if (process.platform !== 'linux' || process.arch !== 'x64') {
  fail(`the native addon is built for linux-x64 only (this is ${process.platform}-${process.arch}).`);
}
const libllama = `libllama.${info.tag}.so`;
const libggml = `libggml.${info.tag}.so`;
for (const lib of [libllama, libggml, 'libggml-base.so']) {
  if (!fs.existsSync(path.join(libDir, lib))) fail(`${lib} is missing from ${libDir}; reinstall node-llama-cpp.`);
}

// Headers from the same release as the libraries (struct layouts differ between releases).
const srcDir = path.join(root, 'build', 'llama.cpp');
const stamp = path.join(srcDir, '.mobillm-release');
if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== info.tag) {
  fs.rmSync(srcDir, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(srcDir), { recursive: true });
  execFileSync('git', ['-c', 'advice.detachedHead=false', 'clone', '-q', path.join(nlcDir, 'llama', 'gitRelease.bundle'), srcDir], { stdio: 'inherit' });
  fs.writeFileSync(stamp, info.tag);
}

const inputs = [...sources, ...headers, __filename];
const upToDate =
  fs.existsSync(outFile) &&
  inputs.every((f) => fs.statSync(f).mtimeMs <= fs.statSync(outFile).mtimeMs) &&
  fs.statSync(outFile).mtimeMs >= fs.statSync(path.join(libDir, libllama)).mtimeMs;
if (upToDate && !process.argv.includes('--force')) {
  console.log(`native addon up to date: ${path.relative(root, outFile)}`);
  process.exit(0);
}

fs.mkdirSync(outDir, { recursive: true });
const rpath = `$ORIGIN/${path.relative(outDir, libDir)}`;
const args = [
  '-O3', '-std=c++17', '-fPIC', '-shared', '-Wall', '-Wno-unused-parameter',
  '-DNAPI_VERSION=8', '-DNAPI_DISABLE_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED',
  `-I${path.join(packageDir('node-api-headers'), 'include')}`,
  `-I${packageDir('node-addon-api')}`,
  `-I${path.join(srcDir, 'include')}`,
  `-I${path.join(srcDir, 'ggml', 'include')}`,
  ...sources,
  '-o', outFile,
  `-L${libDir}`,
  `-l:${libllama}`, `-l:${libggml}`, '-l:libggml-base.so',
  `-Wl,-rpath,${rpath}`,
];
console.log(`building native addon against llama.cpp ${info.tag} ...`);
try {
  execFileSync('g++', args, { stdio: 'inherit' });
} catch {
  fail('g++ failed to build the native addon (is g++ installed? apt-get install -y g++).');
}
console.log(`built ${path.relative(root, outFile)}`);
