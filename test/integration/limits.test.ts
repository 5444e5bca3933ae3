import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ModelSpec } from '../../common/messages';
import { MobiError } from '../../extension/core/MobiError';
import { ServerConnection } from '../../extension/core/connection/ServerConnection';
import { signInStatus } from '../helpers/signIn';
import { MAX_ADDRESS_FAILURES, MAX_AUTH_FAILURES, SLOW_DOWN_MS } from '../../server/AuthLimiter';
import { MobiServer } from '../../server/MobiServer';
import { tmpDir } from '../helpers/workspaces';

const spec: ModelSpec = { fingerprint: 'a'.repeat(64), architecture: 'llama', layers: 2, hiddenSize: 32, vocabularySize: 300, normEpsilon: 1e-5, headDigest: 'c'.repeat(64) };

function healthz(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get(`${url.replace('ws://', 'http://')}/healthz`, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    }).on('error', reject);
  });
}

describe('server limits on loopback (each test its own server)', function () {
  this.timeout(60_000);
  const servers: MobiServer[] = [];
  async function start(options: Partial<ConstructorParameters<typeof MobiServer>[0]> = {}): Promise<{ server: MobiServer; url: string }> {
    const server = new MobiServer({ dataDir: tmpDir('limits'), port: 0, threads: 1, ...options });
    servers.push(server);
    return { server, url: (await server.start()).url };
  }
  after(async () => {
    for (const s of servers) await s.stop();
  });

  it('a revoked token ends its open session within seconds, with a typed reason', async () => {
    const { server, url } = await start();
    const token = await server.users.add('rita');
    const conn = await ServerConnection.open(url, token, spec);
    const lost = new Promise<MobiError>((resolve) => conn.onLost(resolve));
    const t0 = Date.now();
    await server.users.revoke('rita');
    const err = await lost;
    assert.equal(err.code, 'UNAUTHORIZED');
    process.stdout.write(`      closed ${Date.now() - t0} ms after the revocation\n`);
    await assert.rejects(ServerConnection.open(url, token, spec), (e: MobiError) => e.code === 'UNAUTHORIZED');
  });

  it('limits connections per user, not only in total', async () => {
    const { server, url } = await start({ maxDevicesPerUser: 2 });
    const ann = await server.users.add('ann');
    const bob = await server.users.add('bob');
    const open = [await ServerConnection.open(url, ann, spec), await ServerConnection.open(url, ann, spec)];
    await assert.rejects(ServerConnection.open(url, ann, spec), (e: MobiError) => e.code === 'SERVER_ERROR');
    open.push(await ServerConnection.open(url, bob, spec));
    for (const c of open) c.close();
  });

  it('stops checking tokens after too many failed sign-ins, without slowing the server', async () => {
    const { server, url } = await start();
    const token = await server.users.add('tom');
    const wrong = `tom.${'x'.repeat(32)}`;
    for (let i = 0; i < MAX_AUTH_FAILURES; i++) {
      await assert.rejects(ServerConnection.open(url, wrong, spec), (e: MobiError) => e.code === 'UNAUTHORIZED');
    }
    await assert.rejects(ServerConnection.open(url, token, spec), (e: MobiError) => e.code === 'SERVER_ERROR', 'refused by the limit, even with the right token');
    assert.equal(await healthz(url), 200);
  });

  it('sign-in races and lock-outs: attempts count when they start, checks per address are bounded, and guesses never lock out a valid token', async function () {
    this.timeout(120_000);
    const { server, url } = await start();
    const token = await server.users.add('ursula');
    const signIn = (t: string, from: string): Promise<number> => signInStatus(url, t, from);
    const wrong = `ursula.${'x'.repeat(32)}`;
    const statuses = await Promise.all(Array.from({ length: 200 }, () => signIn(wrong, '127.0.0.1')));
    const checked = statuses.filter((s) => s === 401).length;
    assert.equal(statuses.filter((s) => s !== 401 && s !== 429).length, 0, `only 401 and 429: ${statuses.join(',')}`);
    assert.ok(checked <= MAX_AUTH_FAILURES, `${checked} wrong secrets were checked (at most ${MAX_AUTH_FAILURES})`);
    assert.ok(checked <= 2 + MAX_AUTH_FAILURES && checked >= 1, 'at most MAX_CHECKS_PER_ADDRESS run at once');
    for (let n = checked; n < MAX_AUTH_FAILURES; n++) assert.equal(await signIn(wrong, '127.0.0.1'), 401);
    assert.equal(await signIn(wrong, '127.0.0.1'), 429, 'past MAX_AUTH_FAILURES the pair is refused without a check');
    assert.equal(await signIn(token, '127.0.0.1'), 429, 'the guessing address stays refused for that user');
    assert.equal(await signIn(token, '127.0.0.2'), 101, 'a valid first sign-in from another address is not locked out');
    assert.equal(await signIn(token, '127.0.0.1'), 101, 'once verified, the token is accepted without a check, even from the guessing address');
    assert.equal(await healthz(url), 200);
  });

  it('a flood of wrong tokens under many names from one address slows that address down and never refuses a valid token of another user there (a team behind one NAT address)', async function () {
    this.timeout(120_000);
    const { server, url } = await start();
    const token = await server.users.add('vera');
    const signIn = (t: string): Promise<number> => signInStatus(url, t, '127.0.0.3');
    const statuses: number[] = [];
    for (let i = 0; i < MAX_ADDRESS_FAILURES + 5; i++) statuses.push(await signIn(`guess${i}.${'x'.repeat(32)}`));
    assert.deepEqual([...new Set(statuses)], [401], 'each wrong token is checked and refused (401)');
    const t0 = Date.now();
    assert.equal(await signIn(token), 101, 'a valid token from the flooded address is accepted');
    const waited = Date.now() - t0;
    process.stdout.write(`      the valid sign-in after the flood took ${waited} ms (slowed by up to ${SLOW_DOWN_MS} ms)\n`);
  });

  it('a server starting on a data folder removes the temporaries a killed server left there', async () => {
    const dataDir = tmpDir('stale-server');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const leftover = path.join(dataDir, 'jobs', 'ann', '0b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d', `.adapter.mobi.tmp-${dead}-1`);
    fs.mkdirSync(path.dirname(leftover), { recursive: true });
    fs.writeFileSync(leftover, Buffer.alloc(1024));
    await start({ dataDir });
    assert.equal(fs.existsSync(leftover), false);
  });
});
