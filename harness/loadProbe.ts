/**
 * What a team member sees of a busy server, measured from a process of its
 * own (so the load's own event loop does not count): `GET /healthz` every
 * HEALTHZ_EVERY_MS and a sign-in (a new connection, hello and welcome) every
 * SIGN_IN_EVERY_MS, until told to stop on its IPC channel; then it sends
 * the times, milliseconds, and exits.
 *
 *   node out/harness/loadProbe.js '{"url": "ws://…", "token": "…", "model": {…}}'   (with an IPC channel)
 */
import * as http from 'node:http';
import { ServerConnection } from '../extension/core/connection/ServerConnection';
import type { ModelSpec } from '../common/messages';

const HEALTHZ_EVERY_MS = 50;
const SIGN_IN_EVERY_MS = 250;

/** The probe's report: each request's time, milliseconds, and the requests that failed. */
export interface ProbeTimes {
  healthzMs: number[];
  signInMs: number[];
  failures: number;
}

function healthz(port: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/healthz', timeout: 30_000 }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error(`HTTP ${res.statusCode}`))));
      })
      .on('error', reject);
  });
}

async function signIn(url: string, token: string, model: ModelSpec): Promise<number> {
  const t0 = performance.now();
  const conn = await ServerConnection.open(url, token, model, { client: 'load-probe' });
  const ms = performance.now() - t0;
  conn.close();
  return ms;
}

async function main(): Promise<void> {
  const { url, token, model } = JSON.parse(process.argv[2]!) as { url: string; token: string; model: ModelSpec };
  const port = Number(new URL(url).port);
  const times: ProbeTimes = { healthzMs: [], signInMs: [], failures: 0 };
  let running = true;
  process.on('message', (m: { type?: string }) => {
    if (m?.type === 'stop') running = false;
  });
  const loop = async (every: number, probe: () => Promise<number>, into: number[]): Promise<void> => {
    while (running) {
      const started = performance.now();
      try {
        into.push(await probe());
      } catch {
        times.failures++;
      }
      await new Promise((r) => setTimeout(r, Math.max(0, every - (performance.now() - started))));
    }
  };
  process.send!({ type: 'started' });
  await Promise.all([loop(HEALTHZ_EVERY_MS, () => healthz(port), times.healthzMs), loop(SIGN_IN_EVERY_MS, () => signIn(url, token, model), times.signInMs)]);
  process.send!({ type: 'times', times }, () => process.exit(0));
}

if (require.main === module) void main();
