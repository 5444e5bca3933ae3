import type { StoredHead } from '../storage/records';
import type { OpenedTrainer, OpenTrainer, Trainers } from './JobTrainer';
import { LocalTrainer } from './LocalTrainer';
import { OnnxEngine } from './onnx/OnnxEngine';
import { OnnxHead } from './onnx/OnnxHead';

/**
 * Trainers in the calling thread, on one ONNX engine: what each worker of the
 * server's pool runs (server/training/pool/trainerWorker.ts), and what unit
 * tests use to drive jobs without threads. A server never trains on its main
 * thread (MobiServer uses the pool).
 */
export class LocalTrainers implements Trainers {
  private readonly heads = new Map<string, OnnxHead>();

  constructor(readonly engine: OnnxEngine) {}

  get name(): string {
    return this.engine.name;
  }

  get device(): OnnxEngine['device'] {
    return this.engine.device;
  }

  get threads(): number {
    return this.engine.threads;
  }

  readonly workers = 0;

  async loadHead(key: string, head: StoredHead, eps: number): Promise<void> {
    if (this.heads.has(key)) return;
    // A LayerNorm's bias follows its weight in the stored norm (records.ts).
    const c = head.cols;
    this.heads.set(key, new OnnxHead(head.halves, head.norm.subarray(0, c), eps, undefined, head.norm.length === 2 * c ? head.norm.subarray(c) : undefined));
  }

  releaseHead(key: string): void {
    this.heads.delete(key);
  }

  /** The loaded head under `key` (RangeError when none: a standard-mode job opened before its head). */
  head(key: string | undefined): OnnxHead | undefined {
    if (key === undefined) return undefined;
    const head = this.heads.get(key);
    if (!head) throw new RangeError('the job\'s model head is not loaded');
    return head;
  }

  open(request: OpenTrainer): Promise<OpenedTrainer> {
    return LocalTrainer.open(this.engine, this.head(request.headKey), request.spec, request.checkpoints);
  }

  async dispose(): Promise<void> {
    this.heads.clear();
    await this.engine.dispose();
  }
}
