import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { StorageError } from '../../server/storage/StorageError';
import { ServerError } from '../../server/ServerError';
import { BLOB_PART_BYTES } from '../../server/storage/pg/blobs';
import { migrateFolder } from '../../server/storage/migrate';
import { FileStore } from '../../server/storage/file/FileStore';
import { PgStore } from '../../server/storage/pg/PgStore';
import type { ServerStore } from '../../server/storage/Store';
import { config, headHalves, headNorm, model, V, D } from '../helpers/sessionHarness';
import { usePostgres } from '../helpers/postgresHooks';
import { tmpDir } from '../helpers/workspaces';

const isCode = (code: string) => (err: unknown) => (err instanceof StorageError || err instanceof ServerError) && err.code === code;

/** The behaviour every store must have: run on the file store and on PostgreSQL alike. */
function storeSuite(name: string, open: () => Promise<ServerStore>): void {
  describe(`${name}: the store suite`, function () {
    this.timeout(60_000);
    let store: ServerStore;
    before(async () => (store = await open()));
    after(() => store?.close());

    it('users: a token verifies until it is revoked; a second active user of one name is refused', async () => {
      const token = await store.users.add('ann');
      assert.equal((await store.users.verify(token))?.name, 'ann');
      assert.equal(store.users.verifiedBefore(token)?.name, 'ann', 'remembered without scrypt');
      assert.equal(await store.users.verify(`${token}x`), undefined);
      await assert.rejects(store.users.add('ann'), isCode('EXISTS'));
      await assert.rejects(store.users.add('Bad Name'), isCode('BAD_NAME'));
      await store.users.revoke('ann');
      assert.equal(await store.users.verify(token), undefined);
      assert.equal(store.users.verifiedBefore(token), undefined);
      assert.equal(store.users.activeSince('ann'), undefined);
      await assert.rejects(store.users.revoke('ann'), isCode('NO_SUCH_USER'));
      const again = await store.users.add('ann');
      assert.equal((await store.users.verify(again))?.name, 'ann');
      assert.equal((await store.users.list()).filter((u) => u.name === 'ann').at(-1)?.revoked, false);
    });

    it('jobs: records, the two newest checkpoints, the adapter in parts, sizes, and nothing of another user', async () => {
      const rec = await store.jobs.create('bob', 'j', model, config);
      await store.leases.acquire(rec);
      assert.equal((await store.jobs.get('bob', rec.id))?.state, 'training');
      assert.equal(await store.jobs.get('eve', rec.id), undefined, 'another user\'s job is not found');
      assert.equal(await store.jobs.get('bob', 'not-a-uuid'), undefined);
      assert.deepEqual(await store.jobs.readCheckpoints(rec), []);
      const c1 = randomBytes(1000);
      const c2 = randomBytes(2000);
      const c3 = randomBytes(3000);
      await store.jobs.writeCheckpoint(rec, c1);
      await store.jobs.writeCheckpoint(rec, c2);
      await store.jobs.writeCheckpoint(rec, c3);
      assert.deepEqual(await store.jobs.readCheckpoints(rec), [c3, c2], 'newest first, two kept');
      rec.step = 7;
      rec.state = 'finished';
      const adapter = randomBytes(BLOB_PART_BYTES + 12345); // more than one part
      await store.jobs.writeAdapter(rec, adapter);
      await store.jobs.save(rec);
      const back = (await store.jobs.get('bob', rec.id))!;
      assert.equal(back.step, 7);
      assert.equal(back.state, 'finished');
      assert.deepEqual(await store.jobs.readAdapter(back), adapter);
      assert.equal((await store.jobs.adapterInfo(back))?.bytes, adapter.length);
      const at = BLOB_PART_BYTES - 10;
      assert.deepEqual(await store.jobs.readAdapterPart(back, at, 100), adapter.subarray(at, at + 100), 'a range across two parts');
      assert.ok((await store.jobs.bytesOf('bob', rec.id)) >= adapter.length + c3.length + c2.length);
      assert.ok((await store.jobs.bytesOf('bob')) >= (await store.jobs.bytesOf('bob', rec.id)));
      assert.equal(await store.jobs.bytesOf('eve'), 0);
      assert.deepEqual((await store.jobs.list('bob')).map((r) => r.id), [rec.id]);
      await store.leases.release(rec);
    });

    it('jobs: remove deletes a job with its checkpoints, and nothing of another job', async () => {
      const keep = await store.jobs.create('cid', 'keep', model, config);
      const gone = await store.jobs.create('cid', 'gone', model, config);
      await store.leases.acquire(gone);
      await store.jobs.writeCheckpoint(gone, randomBytes(5000));
      await store.leases.release(gone);
      await store.jobs.remove(gone);
      assert.equal(await store.jobs.get('cid', gone.id), undefined);
      assert.equal(await store.jobs.bytesOf('cid', gone.id), 0);
      assert.deepEqual((await store.jobs.list('cid')).map((r) => r.id), [keep.id]);
    });

    it('heads: stored once per key, loaded as stored, counted for their uploader, expired when unused', async () => {
      const other = { ...model, fingerprint: 'c'.repeat(64) };
      assert.equal(await store.heads.has(model), false);
      await store.heads.save(model, V, D, headNorm, headHalves, 'carol');
      await store.heads.save(other, V, D, headNorm, headHalves, 'carol');
      assert.equal(await store.heads.has(model), true);
      const h = await store.heads.load(model);
      assert.deepEqual([h.rows, h.cols], [V, D]);
      assert.deepEqual(Array.from(h.halves), Array.from(headHalves));
      assert.deepEqual(Array.from(h.norm), Array.from(headNorm));
      assert.equal(await store.heads.uploadedBytesOf('carol'), 2 * (8 + 4 * D + 2 * V * D));
      const day = 86_400_000;
      assert.equal(await store.heads.removeUnused(30 * day, new Set()), 0, 'both used just now');
      assert.equal(await store.heads.removeUnused(30 * day, new Set([`${model.fingerprint}.${model.headDigest}.head`]), Date.now() + 31 * day), 1);
      assert.equal(await store.heads.has(model), true);
      assert.equal(await store.heads.has(other), false);
      await assert.rejects(store.heads.has({ fingerprint: 'x', headDigest: 'y' }), isCode('BAD_KEY'));
    });

    it('devices: a user past the limit is refused until one of theirs closes', async () => {
      assert.equal(await store.replicas.openDevice('s1', 'dan', 2), true);
      assert.equal(await store.replicas.openDevice('s2', 'dan', 2), true);
      assert.equal(await store.replicas.openDevice('s3', 'dan', 2), false);
      assert.equal(await store.replicas.openDevice('s4', 'erin', 2), true, 'another user is not affected');
      await store.replicas.closeDevice('s1');
      assert.equal(await store.replicas.openDevice('s5', 'dan', 2), true);
    });

    it('reports itself reachable', async () => {
      assert.equal(await store.reachable(), true);
    });
  });
}

storeSuite('file store', async () => new FileStore(tmpDir('store-suite')));

describe('PostgreSQL store', function () {
  this.timeout(120_000);
  const postgres = usePostgres();
  let n = 0;
  const database = (): string => postgres()!.createDatabase(`suite${++n}`);
  const open = async (url: string, replicaId?: string, leaseMs?: number): Promise<PgStore> => {
    const s = await PgStore.open(url, { replicaId, leaseMs });
    await s.replicas.beat(undefined); // registered, as a started server is
    return s;
  };

  describe('with a database', () => {
    before(function () {
      if (!postgres()) this.skip();
    });
    storeSuite('PostgreSQL store', () => open(database()));
  });

  it('refuses an unreachable database with a typed error that names the URL without its password', async function () {
    if (!postgres()) this.skip();
    const err = await PgStore.open('postgres://admin:hunter2@127.0.0.1:1/mobillm').catch((e: unknown) => e);
    assert.ok(err instanceof ServerError && err.code === 'DATABASE_UNREACHABLE', String(err));
    assert.match(err.message, /postgres:\/\/admin@127\.0\.0\.1:1\/mobillm/);
    assert.doesNotMatch(err.message, /hunter2/);
  });

  it('applies each migration once, also when replicas start together, and refuses a newer schema', async function () {
    if (!postgres()) this.skip();
    const url = database();
    const stores = await Promise.all([open(url), open(url), open(url)]);
    assert.deepEqual(await stores[0]!.db.schemaVersions(), [1, 2]);
    await stores[0]!.db.query('INSERT INTO schema_migrations (version, name) VALUES (99, $1)', ['from the future']);
    await assert.rejects(PgStore.open(url), isCode('DATABASE_SCHEMA'));
    await Promise.all(stores.map((s) => s.close()));
  });

  it('fences a paused owner: after another replica takes the lease, the old owner\'s writes are refused and it learns it lost the job', async function () {
    if (!postgres()) this.skip();
    const url = database();
    const a = await open(url, 'replica-a', 1000);
    const b = await open(url, 'replica-b', 1000);
    await a.replicas.beat('ws://a.example:1');
    const rec = await a.jobs.create('ann', 'j', model, config);
    await a.leases.acquire(rec);
    await a.jobs.writeCheckpoint(rec, Buffer.from('from a'));
    // A renews: B is told where the job is.
    const moved = await b.leases.acquire(rec).catch((e: unknown) => e);
    assert.ok(moved instanceof StorageError && moved.code === 'HELD_ELSEWHERE', String(moved));
    assert.equal(moved.location, 'ws://a.example:1');
    assert.equal(await b.leases.heldElsewhere('ann'), 1, 'the job limit counts A\'s job on B');
    // A pauses (no beat, no renewal): B waits out the lease and takes the job.
    const lost: string[] = [];
    a.leases.onLost((key) => lost.push(key));
    await new Promise((r) => setTimeout(r, 1200));
    await b.leases.acquire(rec);
    await b.jobs.writeCheckpoint(rec, Buffer.from('from b'));
    // A wakes and writes: refused, nothing of B's overwritten.
    await assert.rejects(a.jobs.writeCheckpoint(rec, Buffer.from('stale a')), isCode('LEASE_LOST'));
    await assert.rejects(a.jobs.save({ ...rec, step: 99 }), isCode('LEASE_LOST'));
    assert.deepEqual(lost, [`ann/${rec.id}`]);
    assert.deepEqual((await b.jobs.readCheckpoints(rec)).map(String), ['from b', 'from a']);
    assert.notEqual((await b.jobs.get('ann', rec.id))?.step, 99);
    // A renewal by A also finds the loss (nothing is held any more).
    assert.deepEqual(await a.leases.renew(), []);
    await a.close();
    await b.close();
  });

  it('tells every replica of a revocation within a second (LISTEN/NOTIFY)', async function () {
    if (!postgres()) this.skip();
    const url = database();
    const a = await open(url);
    const b = await open(url);
    const token = await a.users.add('rita');
    assert.equal((await b.users.verify(token))?.name, 'rita');
    const since = b.users.activeSince('rita');
    assert.ok(since);
    const heard = new Promise<number>((resolve) => {
      const t0 = Date.now();
      b.replicas.onUsersChanged(() => resolve(Date.now() - t0));
    });
    await a.users.revoke('rita');
    const ms = await heard;
    assert.ok(ms < 1000, `heard after ${ms} ms`);
    assert.equal(b.users.activeSince('rita'), undefined);
    assert.equal(b.users.verifiedBefore(token), undefined);
    await a.close();
    await b.close();
  });

  it('migrates a data folder: tokens keep working, jobs keep their checkpoints and adapter, heads their uploader; a second run copies nothing twice', async function () {
    if (!postgres()) this.skip();
    const dir = tmpDir('migrate');
    const files = new FileStore(dir);
    const token = await files.users.add('mia');
    await files.users.add('old');
    await files.users.revoke('old');
    const rec = await files.jobs.create('mia', 'j', model, config);
    await files.jobs.writeCheckpoint(rec, Buffer.from('one'));
    await files.jobs.writeCheckpoint(rec, Buffer.from('two'));
    rec.state = 'finished';
    await files.jobs.writeAdapter(rec, Buffer.from('the adapter'));
    await files.jobs.save(rec);
    await files.heads.save(model, V, D, headNorm, headHalves, 'mia');
    const url = database();
    const pgStore = await open(url);
    const report = await migrateFolder(dir, pgStore);
    assert.deepEqual(report, { users: 2, jobs: 1, checkpoints: 2, adapters: 1, heads: 1 });
    assert.equal((await pgStore.users.verify(token))?.name, 'mia');
    assert.deepEqual((await pgStore.users.list()).map((u) => [u.name, u.revoked]), (await files.users.list()).map((u) => [u.name, u.revoked]));
    const moved = (await pgStore.jobs.get('mia', rec.id))!;
    assert.deepEqual(moved, JSON.parse(JSON.stringify((await files.jobs.get('mia', rec.id))!)));
    assert.deepEqual((await pgStore.jobs.readCheckpoints(moved)).map(String), ['two', 'one']);
    assert.equal(String(await pgStore.jobs.readAdapter(moved)), 'the adapter');
    assert.equal((await pgStore.jobs.adapterInfo(moved))?.sha256, (await files.jobs.adapterInfo(rec))?.sha256);
    assert.equal(await pgStore.heads.uploadedBytesOf('mia'), await files.heads.uploadedBytesOf('mia'));
    assert.deepEqual(Array.from((await pgStore.heads.load(model)).halves), Array.from(headHalves));
    await migrateFolder(dir, pgStore);
    assert.equal((await pgStore.db.query('SELECT 1 FROM jobs')).rowCount, 1);
    assert.equal((await pgStore.db.query('SELECT 1 FROM users')).rowCount, 2);
    await pgStore.close();
  });
});
