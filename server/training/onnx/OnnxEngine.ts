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
export class OnnxEngine {
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

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

  /** The session for graph `key`, built by `build` the first time. */
  session(key: string, build: () => Uint8Array): Promise<ort.InferenceSession> {
    let s = this.sessions.get(key);
    if (!s) {
      s = ort.InferenceSession.create(build(), {
        executionProviders: [this.device],
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
      s.catch(() => this.sessions.delete(key));
      this.sessions.set(key, s);
    }
    return s;
  }

  async dispose(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) {
      try {
        await (await s).release();
      } catch {
        // a session that never started has nothing to release
      }
    }
  }
}
