import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The repository's nginx configuration for the team server. */
export const NGINX_CONF = path.resolve(__dirname, '..', '..', 'server', 'deploy', 'nginx', 'mobillm.conf');
const NGINX = '/usr/sbin/nginx';

/**
 * The repository's configuration with its replica addresses and listening
 * port replaced for loopback (`replica-N:8787` -> 127.0.0.1:ports[N]), inside
 * a minimal main configuration that keeps every file in `dir`.
 */
export function loopbackNginxConf(dir: string, listen: number, ports: number[]): string {
  let conf = fs.readFileSync(NGINX_CONF, 'utf8').replace(/listen 8080;/, `listen 127.0.0.1:${listen};`);
  ports.forEach((p, i) => (conf = conf.replaceAll(`replica-${i}:8787`, `127.0.0.1:${p}`)));
  fs.writeFileSync(path.join(dir, 'mobillm.conf'), conf);
  const main = [
    ...(process.getuid?.() === 0 ? ['user root;'] : []),
    'daemon off;',
    'worker_processes 1;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    'events { worker_connections 256; }',
    'http {',
    '  access_log off;',
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${dir}/${t};`),
    `  include ${dir}/mobillm.conf;`,
    '}',
  ].join('\n');
  const file = path.join(dir, 'nginx.conf');
  fs.writeFileSync(file, `${main}\n`);
  return file;
}

/** nginx with the repository's configuration in front of replicas on loopback, or why it cannot run here. */
export function startNginx(listen: number, ports: number[]): Promise<{ url: string; proc: ChildProcess; stop: () => void } | { skip: string }> {
  if (!fs.existsSync(NGINX)) return Promise.resolve({ skip: 'nginx is not installed (apt-get install nginx-light; .ci/run installs it)' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-nginx-'));
  const conf = loopbackNginxConf(dir, listen, ports);
  try {
    execFileSync(NGINX, ['-t', '-q', '-c', conf, '-p', dir], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`nginx -t refused the repository's configuration: ${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  const proc = spawn(NGINX, ['-c', conf, '-p', dir], { stdio: 'ignore' });
  const stop = (): void => {
    proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = (): void => {
      if (proc.exitCode !== null) return reject(new Error(`nginx exited: ${fs.readFileSync(path.join(dir, 'error.log'), 'utf8')}`));
      if (fs.existsSync(path.join(dir, 'nginx.pid'))) return resolve({ url: `ws://127.0.0.1:${listen}`, proc, stop });
      if (Date.now() - t0 > 10_000) return reject(new Error('nginx did not start'));
      setTimeout(poll, 50);
    };
    poll();
  });
}
