import * as path from 'node:path';

/**
 * The platforms the extension ships for, by VS Code's target names
 * (`vsce package --target`), and where each one's native files come from.
 * The addon is built for a target into out/native/<target>/ beside a copy of
 * that target's llama.cpp libraries (build-addon.js), and the package for a
 * target holds that folder and nothing of another platform (scripts/package.js).
 */
export interface NativeTarget {
  /** node-llama-cpp's prebuilt llama.cpp for it: the package @node-llama-cpp/<llama>, libraries in bins/<llama>/. */
  readonly llama: string;
  /** onnxruntime-node's binaries for it (bin/napi-v6/<onnxruntime>/), or undefined: that release ships none (no embedded server there). */
  readonly onnxruntime?: string;
  /** bufferutil's prebuilt binary (prebuilds/<bufferutil>/), or undefined: ws masks in JavaScript there. */
  readonly bufferutil?: string;
  /** The compiler that builds the addon for it on a linux-x64 machine, or undefined: built on its own runners (macOS). */
  readonly crossCompiler?: string;
}

export const NATIVE_TARGETS = {
  'linux-x64': { llama: 'linux-x64', onnxruntime: 'linux/x64', bufferutil: 'linux-x64', crossCompiler: 'g++' },
  'linux-arm64': { llama: 'linux-arm64', onnxruntime: 'linux/arm64', crossCompiler: 'aarch64-linux-gnu-g++' },
  'win32-x64': { llama: 'win-x64', onnxruntime: 'win32/x64', bufferutil: 'win32-x64', crossCompiler: 'x86_64-w64-mingw32-g++-posix' },
  'darwin-arm64': { llama: 'mac-arm64-metal', onnxruntime: 'darwin/arm64', bufferutil: 'darwin-arm64' },
  'darwin-x64': { llama: 'mac-x64', bufferutil: 'darwin-x64' },
} as const satisfies Record<string, NativeTarget>;

export type NativeTargetName = keyof typeof NATIVE_TARGETS;
export const NATIVE_TARGET_NAMES = Object.keys(NATIVE_TARGETS) as NativeTargetName[];

/** The target a machine runs, or undefined where the extension has no native build. */
export function targetOf(platform: string = process.platform, arch: string = process.arch): NativeTargetName | undefined {
  const name = `${platform}-${arch}`;
  return (NATIVE_TARGET_NAMES as string[]).includes(name) ? (name as NativeTargetName) : undefined;
}

/**
 * The file extensions of a target's llama.cpp libraries: the first is the
 * libraries the addon links to; on macOS the backends ggml loads are .so files.
 */
export function libraryExtensions(target: NativeTargetName): string[] {
  if (target.startsWith('win32')) return ['.dll'];
  return target.startsWith('darwin') ? ['.dylib', '.so'] : ['.so'];
}

/** The folder of a target's addon and its llama.cpp libraries, under the package root. */
export function addonDir(root: string, target: NativeTargetName): string {
  return path.join(root, 'out', 'native', target);
}

/** The addon's file for a target. */
export function addonFile(root: string, target: NativeTargetName): string {
  return path.join(addonDir(root, target), 'mobillm.node');
}
