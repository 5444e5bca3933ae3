import * as os from 'node:os';
import { ort } from './ort';
import { ServerError } from '../../ServerError';
import { GraphBuilder } from './GraphBuilder';

/** Where the training graphs run. */
export type ExecutionDevice = 'cpu' | 'cuda';
export const EXECUTION_DEVICES: readonly ExecutionDevice[] = ['cpu', 'cuda'];

/** Options of the training engine. */
export interface OnnxEngineOptions {
  /** Execution provider. Default 'cpu'. */
  device?: ExecutionDevice;
  /** Intra-op threads of the CPU provider. Default: every core of the machine. */
  threads?: number;
}

/**
 * The server's training engine: onnxruntime-node running the side network's
 * graphs (./sideGraphs.ts) on one execution provider. Sessions are built
 * once per graph and shared by every job that needs the same graph; they
 * hold no job state (parameters and optimizer moments are inputs).
 * A provider that cannot run is an error at start-up (`create`), never a
 * silent fallback to another.
 */
/** Sessions no job holds that the engine keeps for reuse (the least recently used beyond it are released). */
export const MAX_IDLE_SESSIONS = 16;

export class OnnxEngine {
  /** Sessions by graph key, least recently used first, with the trainers that hold them (a held session is never released). */
  private readonly sessions = new Map<string, { session: Promise<ort.InferenceSession>; holders: Set<object> }>();

  private constructor(readonly device: ExecutionDevice, readonly threads: number) {}

  /** Engine and provider, as /healthz, /metrics and session/welcome report them. */
  get name(): string {
    return `onnxruntime-${this.device}`;
  }

  /** Starts the engine and proves its provider by running a one-node graph on it. */
  static async create(options: OnnxEngineOptions = {}): Promise<OnnxEngine> {
    const device = options.device ?? 'cpu';
    if (!EXECUTION_DEVICES.includes(device)) throw new ServerError('BAD_CONFIG', `Unknown device "${String(device)}"; use ${EXECUTION_DEVICES.join(' or ')}.`);
    const threads = options.threads ?? os.availableParallelism();
    if (!Number.isInteger(threads) || threads < 1) throw new ServerError('BAD_CONFIG', 'threads must be a positive integer.');
    const engine = new OnnxEngine(device, threads);
    // The probe takes a float16 input, as the head does: it proves the provider and the float16 path.
    const g = new GraphBuilder('probe');
    g.output(g.add(g.op('Cast', [g.input('x', 'float16', [2])], { to: 1 }), g.constant(1)), 'y', 'float32', [2]);
    try {
      const probe = await engine.session('probe', () => g.build());
      const out = await probe.run({ x: new ort.Tensor('float16', Uint16Array.of(0x3c00, 0x4000), [2]) }); // 1, 2
      if ((out.y!.data as Float32Array)[1] !== 3) throw new ServerError('NO_BACKEND', 'the probe graph gave a wrong result');
    } catch (err) {
      await engine.dispose();
      throw new ServerError('NO_BACKEND', `The ONNX Runtime ${device} provider cannot run here (${err instanceof Error ? err.message.split('\n')[0] : String(err)})${device === 'cuda' ? ': the CUDA provider needs CUDA 12 and cuDNN 9 (use the GPU image)' : ''}.`);
    }
    return engine;
  }

  /** The session for graph `key`, built by `build` the first time; `holder` (a trainer) keeps it until it lets go (letGo). */
  session(key: string, build: () => Uint8Array, holder?: object): Promise<ort.InferenceSession> {
    let entry = this.sessions.get(key);
    if (entry) this.sessions.delete(key); // re-inserted below: the most recently used last
    else {
      const session = ort.InferenceSession.create(build(), {
        executionProviders: [this.device],
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
      entry = { session, holders: new Set() };
      session.catch(() => this.sessions.delete(key));
      this.trim(); // only a new session can take the idle ones past the bound
    }
    this.sessions.set(key, entry);
    if (holder) entry.holders.add(holder);
    return entry.session;
  }

  /** `holder` (a disposed trainer) no longer uses its sessions; idle ones beyond MAX_IDLE_SESSIONS are released. */
  letGo(holder: object): void {
    for (const entry of this.sessions.values()) entry.holders.delete(holder);
    this.trim();
  }

  /** Sessions the engine holds now (held by trainers or idle). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  private trim(): void {
    const idle = [...this.sessions].filter(([, e]) => e.holders.size === 0);
    for (const [key, entry] of idle.slice(0, Math.max(0, idle.length - MAX_IDLE_SESSIONS))) {
      this.sessions.delete(key);
      void release(entry.session);
    }
  }

  async dispose(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const e of all) await release(e.session);
  }
}

async function release(session: Promise<ort.InferenceSession>): Promise<void> {
  try {
    await (await session).release();
  } catch {
    // a session that never started has nothing to release
  }
}
