import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { freePort } from './serverProcess';

/** A PostgreSQL server in a temporary folder, for tests and benchmarks (Debian's `postgresql` package). */
export interface TestPostgres {
  port: number;
  /** A new empty database's URL. */
  createDatabase(name: string): string;
  /** Stops the server at once (as a crash would), keeping its data. */
  kill(): void;
  /** Starts it again on the same port and data (without holding the event loop). */
  start(): Promise<void>;
  /** Stops it and deletes its folder. */
  remove(): void;
}

function binDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root) ? fs.readdirSync(root).filter((v) => fs.existsSync(path.join(root, v, 'bin', 'initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : path.join(root, newest, 'bin');
}

/**
 * Starts PostgreSQL in a new temporary folder (trust authentication on
 * 127.0.0.1 only), or says why it cannot: the caller skips with that reason,
 * printed. As root, the server runs as the `postgres` user, as it must.
 */
export async function startPostgres(): Promise<TestPostgres | { skip: string }> {
  const bin = binDir();
  if (!bin) return { skip: 'PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)' };
  const root = process.getuid?.() === 0;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-pg-'));
  fs.chmodSync(dir, 0o755);
  const port = await freePort();
  const asOwnerArgv = (cmd: string, args: string[]): [string, string[]] => (root ? ['su', ['postgres', '-s', '/bin/sh', '-c', [cmd, ...args].map((a) => `'${a}'`).join(' ')]] : [cmd, args]);
  const asOwner = (cmd: string, args: string[]): void => void execFileSync(...asOwnerArgv(cmd, args), { stdio: 'pipe' });
  try {
    if (root) execFileSync('chown', ['postgres', dir]);
    asOwner(path.join(bin, 'initdb'), ['-D', `${dir}/data`, '-A', 'trust', '-U', 'postgres']);
    fs.mkdirSync(`${dir}/sock`, { mode: 0o755 });
    if (root) execFileSync('chown', ['postgres', `${dir}/sock`]);
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    return { skip: `PostgreSQL could not be set up here (${(err as Error).message.split('\n')[0]})` };
  }
  const startArgv = asOwnerArgv(path.join(bin, 'pg_ctl'), ['-D', `${dir}/data`, '-w', '-l', `${dir}/log`, '-o', `-p ${port} -k ${dir}/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off`, 'start']);
  const kill = (): void => {
    try {
      asOwner(path.join(bin, 'pg_ctl'), ['-D', `${dir}/data`, '-m', 'immediate', 'stop']);
    } catch {
      // not running
    }
  };
  try {
    execFileSync(...startArgv, { stdio: 'pipe' });
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    return { skip: `PostgreSQL did not start here (${(err as Error).message.split('\n')[0]})` };
  }
  return {
    port,
    createDatabase: (name) => {
      execFileSync(path.join(bin, 'createdb'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', name], { stdio: 'pipe' });
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    kill,
    start: async () => void (await promisify(execFile)(...startArgv)),
    remove: () => {
      kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
