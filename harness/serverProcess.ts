import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';

export const SERVER_CLI = path.resolve(__dirname, '..', 'server', 'cli', 'main.js');
export const DEVICE_CLI = path.resolve(__dirname, '..', 'extension', 'cli', 'main.js');

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** `mobillm-server users add NAME` through the real CLI, in a data folder or a database (`where`: a folder or a postgres:// URL); returns the token. */
export function addUser(where: string, name: string): string {
  const store = /^postgres(ql)?:\/\//.test(where) ? ['--database', where] : ['--data', where];
  const r = spawnSync(process.execPath, [SERVER_CLI, 'users', 'add', name, ...store], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`users add failed: ${r.stderr}`);
  return r.stdout.trim();
}

/**
 * Starts `mobillm-server start` (the container's entrypoint) and resolves once
 * it reports ready; with `cpu`, pinned to that core (taskset), as benchmarks do.
 */
export function startServerProcess(dataDir: string, port: number, options: { cpu?: number; args?: string[] } = {}): Promise<{ proc: ChildProcess; url: string }> {
  const argv = [process.execPath, SERVER_CLI, 'start', '--data', dataDir, '--port', String(port), ...(options.args ?? [])];
  const [file, ...args] = options.cpu !== undefined ? ['taskset', '-c', String(options.cpu), ...argv] : argv;
  const proc = spawn(file!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 60_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{"ready":true'));
      if (line) {
        clearTimeout(timer);
        resolve({ proc, url: (JSON.parse(line) as { url: string }).url });
      }
    });
    proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${out}`));
    });
  });
}

export function killHard(proc: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill('SIGKILL');
  });
}
