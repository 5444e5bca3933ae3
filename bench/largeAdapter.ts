/**
 * A job shaped like a 7B model (28 layers x 3584, default reduction 8,
 * label-private so no head is needed) on a real server on loopback: created,
 * trained one step, finished, and its adapter downloaded in parts by the
 * device code and verified. Prints the adapter's size, the parts and the
 * seconds each phase took.
 *
 *   npm run bench:large-adapter
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { jobShape } from '../common/AdapterConfig';
import { decodeAdapter, maxAdapterBytes } from '../common/AdapterFile';
import { encodeLayersPayload } from '../common/batchPayload';
import { bytesPerRow } from '../common/ActivationQuantizer';
import { ADAPTER_CHUNK_BYTES } from '../common/limits';
import type { JobConfig, ModelSpec } from '../common/messages';
import { ServerConnection } from '../extension/core/connection/ServerConnection';
import { AdapterDownload, downloadAdapter } from '../extension/core/store/AdapterDownload';
import { MobiServer } from '../server/MobiServer';
import { BENCH_CACHE } from './lib/benchModels';

async function main(): Promise<void> {
  const L = 28;
  const d = 3584;
  const dir = fs.mkdtempSync(path.join(BENCH_CACHE, 'large-adapter-'));
  const server = new MobiServer({ dataDir: path.join(dir, 'server'), port: 0, threads: 1 });
  const { url } = await server.start();
  const t = (): number => performance.now() / 1000;
  // The longest the event loop was held (the server runs in this process): a 10 ms timer's largest lateness.
  let last = performance.now();
  let stall = 0;
  const monitor = setInterval(() => {
    const now = performance.now();
    stall = Math.max(stall, now - last - 10);
    last = now;
  }, 10);
  try {
    const token = await server.users.add('big');
    const model: ModelSpec = { fingerprint: 'd'.repeat(64), architecture: 'qwen2', layers: L, hiddenSize: d, vocabularySize: 152_064, normEpsilon: 1e-6, headDigest: 'e'.repeat(64) };
    const config: JobConfig = { tappedLayers: [...Array(L).keys()], reduction: 8, bits: 8, seqLen: 16, batchSize: 1, totalSteps: 1, learningRate: 1e-3, warmupSteps: 1, seed: 1, checkpointEvery: 100, labelPrivate: true };
    const conn = await ServerConnection.open(url, token, model);
    let t0 = t();
    const { message: ready } = await conn.request({ type: 'job/create', name: 'big', config });
    const created = t() - t0;
    const stalls: Record<string, number> = { create: stall };
    stall = 0;
    const rows = config.seqLen;
    const layers = config.tappedLayers.map(() => new Float32Array(rows * d).fill(0.25));
    t0 = t();
    const side = conn.expect('batch/side', (m) => m.jobId === ready.jobId);
    conn.send({ type: 'batch/train', jobId: ready.jobId, index: 0, rows }, encodeLayersPayload(layers, rows, d, 8));
    await side;
    const ack = conn.expect('batch/ack', (m) => m.jobId === ready.jobId);
    conn.send({ type: 'batch/grad', jobId: ready.jobId, index: 0, rows, lossSum: rows, tokens: rows }, Buffer.alloc(rows * bytesPerRow(d, 8)));
    await ack;
    const stepped = t() - t0;
    stalls.oneStep = stall;
    stall = 0;
    t0 = t();
    await conn.request({ type: 'job/finish', jobId: ready.jobId });
    const finished = t() - t0;
    stalls.finish = stall;
    stall = 0;
    t0 = t();
    const download = new AdapterDownload(path.join(dir, 'device'), ready.jobId);
    const bytes = await downloadAdapter(conn, download, ready.jobId, maxAdapterBytes(jobShape(config, model)));
    const downloaded = t() - t0;
    stalls.download = stall;
    const { header } = decodeAdapter(bytes, model.fingerprint);
    download.remove();
    conn.close();
    const result = {
      adapterMiB: +(bytes.length / 2 ** 20).toFixed(1), parts: Math.ceil(bytes.length / ADAPTER_CHUNK_BYTES), verified: header.config.shape.d === d,
      seconds: { create: +created.toFixed(2), oneStep: +stepped.toFixed(2), finish: +finished.toFixed(2), download: +downloaded.toFixed(2) },
      longestEventLoopStallSeconds: Object.fromEntries(Object.entries(stalls).map(([k, v]) => [k, +(v / 1000).toFixed(2)])),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    clearInterval(monitor);
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
