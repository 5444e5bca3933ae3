/**
 * A training worker thread of the server's pool (TrainerPool): one ONNX
 * engine, the heads of the models its jobs use, and its jobs' trainers
 * (LocalTrainer). It answers the main thread's requests one at a time, in
 * the order the pool sends them.
 */
import { parentPort } from 'node:worker_threads';
import { WireError } from '../../../common/WireError';
import { ServerError } from '../../ServerError';
import type { StoredHead } from '../../storage/records';
import type { JobTrainer } from '../JobTrainer';
import { LocalTrainers } from '../LocalTrainers';
import { OnnxEngine } from '../onnx/OnnxEngine';
import type { TrainerCall, TrainerCalls, TrainerReply, TrainerRequest } from './trainerMessages';

let trainers: LocalTrainers | undefined;
const jobs = new Map<string, JobTrainer>();

function jobOf(job: string): JobTrainer {
  const t = jobs.get(job);
  if (!t) throw new RangeError('no such job in this worker');
  return t;
}

function engine(): LocalTrainers {
  if (!trainers) throw new RangeError('the worker\'s engine is not started');
  return trainers;
}

type Handlers = { [C in TrainerCall]: (p: TrainerCalls[C]['params']) => Promise<TrainerCalls[C]['result']> };

const handlers: Handlers = {
  'engine/start': async (p) => {
    trainers = new LocalTrainers(await OnnxEngine.create({ device: p.device, threads: p.threads }));
    return { name: trainers.name };
  },
  'head/load': async (p) => {
    // The head is copied out of shared memory: ONNX Runtime takes only buffers of its own.
    const halves = Uint16Array.from(new Uint16Array(p.halves));
    const head: StoredHead = { rows: halves.length / p.cols, cols: p.cols, norm: p.norm, halves };
    await engine().loadHead(p.key, head, p.eps);
  },
  'head/release': async (p) => engine().releaseHead(p.key),
  'job/open': async (p) => {
    const opened = await engine().open({ job: p.job, user: '', spec: p.spec, ...(p.headKey !== undefined ? { headKey: p.headKey } : {}), checkpoints: p.checkpoints });
    if ('unreadable' in opened) return { unreadable: true, step: 0 };
    jobs.set(p.job, opened.trainer);
    return { ...(opened.from ? { from: opened.from } : {}), step: opened.trainer.step };
  },
  'job/train': (p) => jobOf(p.job).train(p.batch),
  'job/evaluate': (p) => jobOf(p.job).evaluate(p.batch),
  'job/sideOutput': (p) => jobOf(p.job).sideOutput(p.batch, p.keepFor),
  'job/upstreamStep': (p) => jobOf(p.job).upstreamStep(p.index, p.dy, p.lossSum, p.tokens),
  'job/forgetPending': (p) => jobOf(p.job).forgetPending(),
  'job/setStartValues': (p) => jobOf(p.job).setStartValues(p.values),
  'job/encode': (p) => jobOf(p.job).encode(p.kind, p.meta),
  'job/close': async (p) => {
    const t = jobs.get(p.job);
    jobs.delete(p.job);
    await t?.dispose();
  },
};

/** The buffers a result gives up to the main thread (moved, not copied): only one the result owns whole (a small Buffer shares Node's pool). */
function transferablesOf(result: unknown): ArrayBuffer[] {
  if (result instanceof Uint8Array && result.buffer instanceof ArrayBuffer && result.byteOffset === 0 && result.byteLength === result.buffer.byteLength) return [result.buffer];
  return [];
}

function errorOf(err: unknown): Extract<TrainerReply, { ok: false }>['error'] {
  if (err instanceof WireError) return { wire: { code: err.code, message: err.message }, name: err.name };
  if (err instanceof ServerError) return { server: { code: err.code, message: err.message }, name: err.name };
  return { name: err instanceof Error ? err.name : 'unknown' };
}

const port = parentPort;
if (port) {
  // Requests run one after another: a job's operations keep their order, and one worker runs one step at a time.
  let chain: Promise<void> = Promise.resolve();
  port.on('message', (req: TrainerRequest) => {
    chain = chain.then(async () => {
      try {
        const handler = handlers[req.call] as (p: unknown) => Promise<unknown>;
        const result = await handler(req.params);
        const reply: TrainerReply = { id: req.id, ok: true, result };
        port.postMessage(reply, transferablesOf(result));
      } catch (err) {
        const reply: TrainerReply = { id: req.id, ok: false, error: errorOf(err) };
        port.postMessage(reply);
      }
    });
  });
}
