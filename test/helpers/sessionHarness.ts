import * as assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { WebSocket } from 'ws';
import { encodeBatchPayload } from '../../common/batchPayload';
import { decodeServerFrame, encodeFrame } from '../../common/codec';
import type { DeviceMessage, JobConfig, ModelSpec, ServerMessage } from '../../common/messages';
import { SeededRandom } from '../../common/SeededRandom';
import { headDigestOf } from '../../server/HeadUpload';
import { HeadStore } from '../../server/storage/file/HeadStore';
import { JobStore } from '../../server/storage/file/JobStore';
import { tmpDir } from './workspaces';

// A small model and job for driving a DeviceSession, a JobRegistry or a TrainingJob in unit tests.

export const D = 16;
export const V = 40;
const L = 2;
/** The model's norm and head (f16 bits), and a spec whose headDigest matches them. */
export const headNorm = Float32Array.from({ length: D }, () => 1);
export const headHalves = ((rng) => Uint16Array.from({ length: V * D }, () => 0x3c00 ^ (rng.next() < 0.5 ? 0x8000 : 0)))(new SeededRandom(3));
export const model: ModelSpec = { fingerprint: 'a'.repeat(64), architecture: 'llama', layers: L, hiddenSize: D, vocabularySize: V, normEpsilon: 1e-5, headDigest: headDigestOf(headNorm, headHalves) };
export const config: JobConfig = { tappedLayers: [0, 1], reduction: 4, bits: 8, seqLen: 8, batchSize: 1, totalSteps: 3, learningRate: 1e-2, warmupSteps: 1, seed: 1, checkpointEvery: 2 };

export async function storesWithHead(): Promise<{ heads: HeadStore; jobs: JobStore }> {
  const dir = tmpDir('server-unit');
  const heads = new HeadStore(dir);
  await heads.save(model, V, D, headNorm, headHalves);
  return { heads, jobs: new JobStore(dir) };
}

export function batchPayload(seed: number, poison?: number): { payload: Buffer; rows: number } {
  const rng = new SeededRandom(seed);
  const rows = config.seqLen;
  const layers = config.tappedLayers.map(() => Float32Array.from({ length: rows * D }, () => rng.normal()));
  if (poison !== undefined) layers[0]!.fill(poison, 0, D); // the first token of the first layer
  const targets = Int32Array.from({ length: rows }, (_, i) => (i * 7 + seed) % V);
  return { payload: encodeBatchPayload({ rows, layers, targets, mask: new Uint8Array(rows).fill(1) }, D, 8), rows };
}

/** The socket end a DeviceSession talks to, driven by the test: frames in, decoded frames out. */
export class SocketEnd extends EventEmitter {
  readyState: number = WebSocket.OPEN;
  bufferedAmount = 0;
  readonly received: ServerMessage[] = [];
  closedWith: number | undefined;
  send(data: Buffer): void {
    this.received.push(decodeServerFrame(data).message);
  }
  close(code: number): void {
    this.closedWith = code;
    this.readyState = WebSocket.CLOSED;
  }
  ping(): void {}
  terminate(): void {
    this.readyState = WebSocket.CLOSED;
  }
  deliver(m: DeviceMessage, payload?: Uint8Array): void {
    this.emit('message', encodeFrame(m, payload), true);
  }
  async next<T extends ServerMessage['type']>(type: T): Promise<ServerMessage<T>> {
    for (let i = 0; i < 400; i++) {
      const at = this.received.findIndex((m) => m.type === type || m.type === 'error');
      if (at >= 0) {
        const [m] = this.received.splice(at, 1);
        if (m!.type === 'error' && type !== 'error') assert.fail(`expected ${type}, got error ${m!.code}: ${m!.message}`);
        return m as ServerMessage<T>;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return assert.fail(`no ${type} arrived`);
  }
}
