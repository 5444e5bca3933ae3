import * as fs from 'node:fs';
import * as path from 'node:path';

const PACKAGE_NAME = 'mobillm-vscode';
let cached: string | undefined;

/** The running code is not inside an installed copy of this package (a broken install). */
export class PackageRootError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PackageRootError';
  }
}

/**
 * The folder holding this package's package.json: found by walking up from
 * the running file, so it is the same from the compiled tree
 * (out/extension/native/…) and from the extension's one-file bundle (dist/).
 */
export function packageRoot(): string {
  if (cached) return cached;
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      try {
        if ((JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string }).name === PACKAGE_NAME) return (cached = dir);
      } catch {
        // not ours: keep walking up
      }
    }
    if (path.dirname(dir) === dir) throw new PackageRootError(`No ${PACKAGE_NAME} package.json above ${__dirname}: reinstall the extension or run "npm ci".`);
  }
}

/** This package's version (package.json). */
export function packageVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}
