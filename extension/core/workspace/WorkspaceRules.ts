import * as fs from 'node:fs';
import * as path from 'node:path';
import ignore, { Ignore } from 'ignore';
import { DEFAULT_EXCLUDED_DIRS, LOCK_FILES, SECRET_PATTERNS, SkipReason } from './scanWorkspace';

/**
 * The workspace scan's rules for one path at a time (a file saved, renamed or
 * created after the scan): the default excluded folders, every .gitignore
 * from the root down to the file's folder, the user's excludes, secrets and
 * lock files. What scanWorkspace skips by its path, this skips too, with the
 * same reason; size, content and links are the reader's to check.
 */
export class WorkspaceRules {
  /** Each folder's .gitignore (undefined: none), read once until forget(). */
  private readonly gitignores = new Map<string, Ignore | undefined>();
  private readonly exclude: Ignore;

  constructor(private readonly root: string, exclude: string[] = []) {
    this.exclude = ignore().add(exclude);
  }

  /** Why the file at workspace-relative `rel` (forward slashes) is left out, or undefined when it is not. */
  skipReason(rel: string): SkipReason | undefined {
    const parts = rel.split('/');
    if (parts.some((p) => p === '' || p === '.' || p === '..')) return 'excluded';
    const name = parts[parts.length - 1]!;
    for (let i = 0; i < parts.length; i++) {
      const isDir = i < parts.length - 1;
      const here = parts.slice(0, i + 1).join('/');
      const forMatch = isDir ? `${here}/` : here;
      if (isDir && DEFAULT_EXCLUDED_DIRS.includes(parts[i]!)) return 'excluded';
      // Rules of the root and of every folder above this entry.
      for (let j = 0; j <= i; j++) {
        const base = parts.slice(0, j).join('/');
        const ig = this.gitignoreOf(base);
        if (ig && ig.ignores(base ? path.posix.relative(base, forMatch) + (isDir ? '/' : '') : forMatch)) return 'gitignore';
      }
      if (this.exclude.ignores(forMatch)) return 'excluded';
    }
    if (SECRET_PATTERNS.ignores(name) || SECRET_PATTERNS.ignores(rel)) return 'secret';
    if (LOCK_FILES.has(name)) return 'lock-file';
    return undefined;
  }

  /** Forgets the .gitignore files read (one was saved). */
  forget(): void {
    this.gitignores.clear();
  }

  private gitignoreOf(dirRel: string): Ignore | undefined {
    if (!this.gitignores.has(dirRel)) {
      let rules: Ignore | undefined;
      try {
        rules = ignore().add(fs.readFileSync(path.join(this.root, dirRel, '.gitignore'), 'utf8'));
      } catch {
        rules = undefined;
      }
      this.gitignores.set(dirRel, rules);
    }
    return this.gitignores.get(dirRel);
  }
}
