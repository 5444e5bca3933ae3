import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { decodeDeviceFrame } from '../../common/codec';
import { decodeAdapter } from '../../common/AdapterFile';
import { FineTuneJob } from '../../extension/core/job/FineTuneJob';
import { MobiError } from '../../extension/core/MobiError';
import { AdapterDownload } from '../../extension/core/store/AdapterDownload';
import { MobiServer } from '../../server/MobiServer';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

describe('adapters download in parts, whatever their size', function () {
  this.timeout(120_000);
  let server: MobiServer;
  let url: string;
  let dataDir: string;
  before(async () => {
    dataDir = tmpDir('parts-server');
    server = new MobiServer({ dataDir, port: 0, threads: 1, adapterChunkBytes: 1024 });
    url = (await server.start()).url;
  });
  after(() => server.stop());

  it('a fine-tune downloads its adapter in many parts and stores exactly the server\'s file', async () => {
    const token = await server.users.add('paula');
    const gets: number[] = [];
    const store = tmpDir('parts-store');
    const r = await new FineTuneJob({
      workspace: makeWorkspace(8, 4, 40), model: tinyModel({ layers: 2, embd: 64, heads: 2 }), storeDir: store, threads: 1, steps: 3, seqLen: 16,
      server: { url, token },
      onFrameSent: (f) => {
        const { message } = decodeDeviceFrame(Buffer.from(f));
        if (message.type === 'adapter/get') gets.push(message.offset ?? 0);
      },
    }).run();
    const onServer = fs.readFileSync(path.join(dataDir, 'jobs', 'paula', r.jobId, 'adapter.mobi'));
    assert.ok(onServer.length > 4 * 1024, `a ${onServer.length}-byte adapter`);
    assert.equal(gets.length, Math.ceil(onServer.length / 1024), "one request per 1024-byte part");
    assert.deepEqual(gets, gets.map((_, i) => i * 1024), 'parts asked in order');
    // Label-private (a team server's default): the stored adapter is the server's with the laptop's head update added.
    const [theirs, stored] = [decodeAdapter(onServer), decodeAdapter(fs.readFileSync(r.adapter))];
    for (const [name, t] of theirs.tensors) assert.deepEqual(stored.tensors.get(name)?.data, t.data, name);
    assert.deepEqual([...stored.tensors.keys()].filter((n) => !theirs.tensors.has(n)), ['head_a', 'head_b']);
    assert.deepEqual(stored.header.meta, theirs.header.meta);
    const noHead = await new FineTuneJob({
      workspace: makeWorkspace(8, 4, 40), model: tinyModel({ layers: 2, embd: 64, heads: 2 }), storeDir: tmpDir('parts-store'), threads: 1, steps: 3, seqLen: 16,
      server: { url, token }, headRank: 0,
    }).run();
    assert.deepEqual(fs.readFileSync(noHead.adapter), fs.readFileSync(path.join(dataDir, 'jobs', 'paula', noHead.jobId, 'adapter.mobi')), 'without a head update: exactly the server\'s file');
    assert.deepEqual(fs.readdirSync(path.join(store, 'downloads')), [], 'the partial is gone once the adapter is stored');
  });

  it('a partial download resumes where it stopped; one of another adapter starts over; a wrong checksum is refused', async () => {
    const store = tmpDir('partial');
    const jobId = '0b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d';
    const whole = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
    const size = { bytes: whole.length, sha256: createHash('sha256').update(whole).digest('hex') };
    const first = new AdapterDownload(store, jobId);
    assert.equal(first.write(size, 0, whole.subarray(0, 4096)), 4096);
    const again = new AdapterDownload(store, jobId); // a later connection
    assert.equal(again.offset(), 4096, 'resumes after the bytes it has');
    assert.equal(again.offset({ ...size, sha256: 'f'.repeat(64) }), 0, 'another adapter starts over');
    assert.throws(() => again.write(size, 8192, whole.subarray(8192)), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'), 'a gap is refused');
    again.write(size, 4096, whole.subarray(4096));
    assert.deepEqual(await again.complete(size), whole);
    const wrong = new AdapterDownload(store, '1b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d');
    wrong.write({ ...size, sha256: '0'.repeat(64) }, 0, whole);
    await assert.rejects(wrong.complete({ ...size, sha256: '0'.repeat(64) }), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'));
    assert.equal(wrong.offset(), 0, 'a refused download is discarded');
  });

  it('a part past the declared size is refused before it is written, a first part included', () => {
    const store = tmpDir('overflow');
    const jobId = '2b9f4c2e-6d1a-4e5b-9c3d-2a7f8e1b4c6d';
    const size = { bytes: 1000, sha256: 'a'.repeat(64) };
    const download = new AdapterDownload(store, jobId);
    assert.throws(() => download.write(size, 0, Buffer.alloc(2000)), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'));
    assert.equal(fs.existsSync(path.join(store, 'downloads')), false, 'nothing written for a first part past the size');
    download.write(size, 0, Buffer.alloc(600));
    assert.throws(() => download.write(size, 600, Buffer.alloc(600)), (e: unknown) => MobiError.is(e, 'ADAPTER_CORRUPT'));
    assert.equal(fs.statSync(path.join(store, 'downloads', `${jobId}.part`)).size, 600, 'the partial keeps what it had');
  });
});
