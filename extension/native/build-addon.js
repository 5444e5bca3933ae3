#!/usr/bin/env node
// Builds (at -O3: the side network's loops vectorise) the C++ sources of
// extension/native/ (addon.cpp and its parts) into out/native/<target>/mobillm.node
// with one compiler command, against the shared libraries node-llama-cpp ships
// prebuilt for that target, copied beside the addon, and the headers of the very
// same llama.cpp release, taken from the git bundle inside the node-llama-cpp
// package (cloned offline into build/llama.cpp, outside git). Run by
// `npm install` (postinstall) for this machine; no cmake.
//
//   node extension/native/build-addon.js [--target linux-x64|linux-arm64|win32-x64|darwin-arm64|darwin-x64] [--force]
//
// Targets (extension/native/targets.ts): this machine's; from linux-x64 also
// linux-arm64 (Debian's g++-aarch64-linux-gnu) and win32-x64 (mingw-w64); the
// macOS targets on macOS only (the release workflow's runners). Another
// target's llama.cpp libraries come from its npm package at node-llama-cpp's
// pinned version (`npm pack`, cached in build/targets/).
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..', '..');
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

const targetsFile = path.join(root, 'out', 'extension', 'native', 'targets.js');
if (!fs.existsSync(targetsFile)) fail('out/extension/native/targets.js is missing: compile the TypeScript first (npx tsc -p .).');
const { NATIVE_TARGETS, NATIVE_TARGET_NAMES, targetOf, addonDir, libraryExtensions } = require(targetsFile);

const arg = (name) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const host = targetOf(process.platform, process.arch);
const target = arg('--target') ?? host;
if (!target || !NATIVE_TARGETS[target]) fail(`no native target ${target ?? `${process.platform}-${process.arch}`}; the targets are ${NATIVE_TARGET_NAMES.join(', ')}.`);
const spec = NATIVE_TARGETS[target];
const os = target.split('-')[0];

/** The compiler for the target on this machine. */
function compilerFor() {
  if (os === 'darwin') {
    if (process.platform !== 'darwin') fail(`${target} is built on macOS (the release workflow's macOS runners): this machine has no macOS SDK.`);
    return 'clang++';
  }
  if (target === host) return 'g++'; // on Windows: MinGW-w64's g++ (GitHub's Windows runners have it)
  if (host !== 'linux-x64') fail(`${target} is cross-built on linux-x64 only (this is ${host}).`);
  return spec.crossCompiler;
}
const compiler = compilerFor();

const nlcDir = packageDir('node-llama-cpp');
const nlcVersion = JSON.parse(fs.readFileSync(path.join(nlcDir, 'package.json'), 'utf8')).version;
const info = JSON.parse(fs.readFileSync(path.join(nlcDir, 'llama', 'llama.cpp.info.json'), 'utf8'));

/** The folder of the target's prebuilt llama.cpp: the installed package when npm put it here at the pinned version, else fetched. */
function llamaLibraries() {
  const name = `@node-llama-cpp/${spec.llama}`;
  const installed = path.join(root, 'node_modules', name);
  const versionOf = (dir) => {
    try {
      return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
    } catch {
      return undefined;
    }
  };
  if (versionOf(installed) === nlcVersion) return path.join(installed, 'bins', spec.llama);
  const cache = path.join(root, 'build', 'targets', target);
  const unpacked = path.join(cache, 'package');
  if (versionOf(unpacked) !== nlcVersion) {
    fs.rmSync(cache, { recursive: true, force: true });
    fs.mkdirSync(cache, { recursive: true });
    console.log(`fetching ${name}@${nlcVersion} ...`);
    try {
      const tgz = execFileSync('npm', ['pack', `${name}@${nlcVersion}`, '--silent', '--pack-destination', cache], { encoding: 'utf8' }).trim().split('\n').pop();
      execFileSync('tar', ['xzf', path.join(cache, tgz), '-C', cache]);
    } catch {
      fail(`could not fetch ${name}@${nlcVersion} from the npm registry.`);
    }
  }
  return path.join(unpacked, 'bins', spec.llama);
}
const libDir = llamaLibraries();
const extensions = libraryExtensions(target);
const ext = extensions[0];
// Library files the target's package holds (on macOS the backends are .so files beside the .dylib libraries).
const libraries = fs.readdirSync(libDir).filter((f) => extensions.some((e) => f.endsWith(e)));
/** The one library named `base`, with the release tag and perhaps a build name between (libllama.v0.4.0.so, libllama.metal.v0.4.0.dylib). */
function library(base, tagged) {
  const pattern = new RegExp(`^(lib)?${base}${tagged ? `\\.([a-z0-9_]+\\.)?${info.tag.replace(/\./g, '\\.')}` : ''}\\${ext}$`);
  const found = libraries.filter((f) => pattern.test(f));
  if (found.length !== 1) fail(`no single ${base} library (${ext}) in ${libDir}: ${found.join(', ') || 'none'}; reinstall node-llama-cpp.`);
  return found[0];
}
const libllama = library('llama', true);
const libggml = library('ggml', true);
const libbase = library('ggml-base', false);

// Headers from the same release as the libraries (struct layouts differ between releases).
const srcDir = path.join(root, 'build', 'llama.cpp');
const stamp = path.join(srcDir, '.mobillm-release');
if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== info.tag) {
  fs.rmSync(srcDir, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(srcDir), { recursive: true });
  execFileSync('git', ['-c', 'advice.detachedHead=false', 'clone', '-q', path.join(nlcDir, 'llama', 'gitRelease.bundle'), srcDir], { stdio: 'inherit' });
  fs.writeFileSync(stamp, info.tag);
}

const outDir = addonDir(root, target);
const outFile = path.join(outDir, 'mobillm.node');
const inputs = [...sources, ...headers, __filename];
const upToDate =
  fs.existsSync(outFile) &&
  inputs.every((f) => fs.statSync(f).mtimeMs <= fs.statSync(outFile).mtimeMs) &&
  fs.statSync(outFile).mtimeMs >= fs.statSync(path.join(libDir, libllama)).mtimeMs;
if (upToDate && !process.argv.includes('--force')) {
  console.log(`native addon up to date: ${path.relative(root, outFile)}`);
  process.exit(0);
}

// The target's llama.cpp and ggml libraries (the CPU backends included) beside the addon: its rpath is $ORIGIN
// (@loader_path on macOS; Windows looks in the addon's own folder), and the loader finds the backends there.
fs.rmSync(outDir, { recursive: true, force: true });
fs.mkdirSync(outDir, { recursive: true });
for (const f of libraries) fs.copyFileSync(path.join(libDir, f), path.join(outDir, f));

const common = [
  '-O3', '-std=c++17', '-Wall', '-Wno-unused-parameter',
  '-DNAPI_VERSION=8', '-DNAPI_DISABLE_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED',
  `-I${path.join(packageDir('node-api-headers'), 'include')}`,
  `-I${packageDir('node-addon-api')}`,
  `-I${path.join(srcDir, 'include')}`,
  `-I${path.join(srcDir, 'ggml', 'include')}`,
];
const linked = [libllama, libggml, libbase].map((l) => path.join(outDir, l));
let args;
if (os === 'linux') {
  args = [...common, '-fPIC', '-shared', ...sources, '-o', outFile, ...linked, '-Wl,-rpath,$ORIGIN'];
} else if (os === 'darwin') {
  args = [...common, '-bundle', '-undefined', 'dynamic_lookup', ...sources, '-o', outFile, ...linked, '-Wl,-rpath,@loader_path'];
} else {
  args = [...common, ...windowsArgs(), '-o', outFile];
}

/**
 * Windows: the DLLs are MSVC builds that ship no import libraries; GNU ld links
 * their exported C API directly. Node-API comes from the process that loads the
 * addon: node.exe, or Code.exe in VS Code. The addon imports it from "node.exe"
 * through a delay-load import library (dlltool, from node-api-headers' export
 * list), and winDelayLoad.cpp points that name at the host process when it loads.
 */
function windowsArgs() {
  const dlltool = process.platform === 'win32' ? 'dlltool' : 'x86_64-w64-mingw32-dlltool';
  const def = path.join(packageDir('node-api-headers'), 'def', 'node_api.def');
  const delayLib = path.join(root, 'build', 'targets', target, 'libnode_api_delay.a');
  fs.mkdirSync(path.dirname(delayLib), { recursive: true });
  try {
    execFileSync(dlltool, ['-d', def, '-D', 'node.exe', '-y', delayLib]);
  } catch {
    fail(`${dlltool} failed (is mingw-w64 installed? apt-get install -y g++-mingw-w64-x86-64-posix).`);
  }
  return ['-shared', '-static-libgcc', '-static-libstdc++', '-static', '-DMOBILLM_WIN_DELAY_LOAD', ...sources, path.join(__dirname, 'win', 'winDelayLoad.cpp'), ...linked, delayLib];
}

console.log(`building native addon for ${target} against llama.cpp ${info.tag} (${compiler}) ...`);
try {
  execFileSync(compiler, args, { stdio: 'inherit' });
} catch {
  fail(`${compiler} failed to build the native addon for ${target} (is it installed? linux-x64: apt-get install -y g++; linux-arm64: g++-aarch64-linux-gnu; win32-x64: g++-mingw-w64-x86-64-posix).`);
}
console.log(`built ${path.relative(root, outFile)}`);
