import { bytesPerRow, dequantizeRows, joinBits, quantizeRows } from '../../common/ActivationQuantizer';
import { checkSideNetworkTensors } from '../../common/AdapterConfig';
import { encodeAdapterSliced } from '../../common/AdapterFile';
import { ActivationBatch, decodeBatchPayload, decodeLayersPayload } from '../../common/batchPayload';
import { WireError } from '../../common/WireError';
import type { EncodedBatch, JobTrainer, OpenedTrainer, TrainerSpec, TrainOutcome } from './JobTrainer';
import { OnnxEngine } from './onnx/OnnxEngine';
import { OnnxHead } from './onnx/OnnxHead';
import { OnnxTrainer, StepResult } from './onnx/OnnxTrainer';
import { readCheckpoint } from './readCheckpoint';
import { adapterConfig, initialParametersAsync, parameterNames, parameterShape } from './sideNetworkSpec';
import type { OptimizerState } from './TrainerOptions';

/** The bytes of `data` as a Buffer, without a copy. */
function asBuffer(data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** Whether every activation of the batch is a finite number (NaN or Inf would poison the weights). */
export function allFinite(arrays: Float32Array[]): boolean {
  for (const layer of arrays) {
    for (let i = 0; i < layer.length; i++) if (!Number.isFinite(layer[i]!)) return false;
  }
  return true;
}

/**
 * One job's trainer in the thread that runs it (a worker of the pool, or the
 * caller's in tests): decodes the device's batches, refuses non-finite ones,
 * runs the ONNX training step (OnnxTrainer) and encodes checkpoints and the
 * adapter. Everything heavy of a job happens here.
 */
export class LocalTrainer implements JobTrainer {
  /** Label-private: the decoded layers of the training batch whose gradient is awaited. */
  private pending: { index: number; batch: EncodedBatch; layers: Float32Array[] } | undefined;

  private constructor(
    private readonly trainer: OnnxTrainer,
    private readonly spec: TrainerSpec,
  ) {}

  /**
   * The trainer of a job from its newest readable checkpoint (newest first in
   * `checkpoints`), or from fresh weights (filled in slices) when it has none.
   */
  static async open(engine: OnnxEngine, head: OnnxHead | undefined, spec: TrainerSpec, checkpoints: Uint8Array[]): Promise<OpenedTrainer> {
    const { shape, config } = spec;
    const rec = { model: spec.model };
    let ckpt: Awaited<ReturnType<typeof readCheckpoint>>;
    for (const bytes of checkpoints) if ((ckpt = await readCheckpoint(asBuffer(bytes), rec, shape))) break;
    if (checkpoints.length > 0 && !ckpt) return { unreadable: true };
    const values = ckpt?.values ?? (await initialParametersAsync(shape, config.seed));
    const state: OptimizerState | undefined = ckpt?.state;
    const trainer = new OnnxTrainer(engine, shape, head, values, { learningRate: config.learningRate, warmupSteps: config.warmupSteps, totalSteps: config.totalSteps, softCap: spec.model.softCap ?? 0 }, state);
    const from = ckpt ? { step: ckpt.state.step, nextIndex: ckpt.nextIndex, trainTokens: ckpt.trainTokens } : undefined;
    return { trainer: new LocalTrainer(trainer, spec), ...(from ? { from } : {}) };
  }

  get step(): number {
    return this.trainer.step;
  }

  private decode(batch: EncodedBatch): ActivationBatch {
    const { config, model } = this.spec;
    const decoded = decodeBatchPayload(asBuffer(batch.payload), batch.rows, config.tappedLayers.length, model.hiddenSize, config.bits, model.vocabularySize);
    return { ...decoded, ...(batch.lengths ? { lengths: batch.lengths } : {}) };
  }

  private layersOf(batch: EncodedBatch): Float32Array[] {
    const { config, model } = this.spec;
    return decodeLayersPayload(asBuffer(batch.payload), batch.rows, config.tappedLayers.length, model.hiddenSize, config.bits);
  }

  async train(batch: EncodedBatch): Promise<TrainOutcome> {
    const decoded = this.decode(batch);
    if (!allFinite(decoded.layers)) return 'nonFinite';
    return this.trainer.trainBatch(decoded);
  }

  async evaluate(batch: EncodedBatch): Promise<{ lossSum: number; tokens: number }> {
    const decoded = this.decode(batch);
    if (!allFinite(decoded.layers)) throw new WireError('BAD_FRAME', 'the held-out batch has NaN or infinite activations');
    return this.trainer.evalBatch(decoded);
  }

  /** [rows][d] floats quantized at the join's bits (what batch/side and eval/side carry). */
  private quantized(rows: number, data: Float32Array): Uint8Array {
    const d = this.spec.model.hiddenSize;
    const bits = joinBits(this.spec.config.bits);
    const out = Buffer.allocUnsafe(rows * bytesPerRow(d, bits));
    quantizeRows(data, rows, d, bits, out, 0);
    return out;
  }

  async sideOutput(batch: EncodedBatch, keepFor?: number): Promise<Uint8Array | 'nonFinite'> {
    const layers = this.layersOf(batch);
    if (!allFinite(layers)) {
      if (keepFor === undefined) throw new WireError('BAD_FRAME', 'the held-out batch has NaN or infinite activations');
      return 'nonFinite';
    }
    const delta = await this.trainer.sideDelta(layers, batch.rows, batch.lengths);
    if (keepFor !== undefined) this.pending = { index: keepFor, batch, layers };
    return this.quantized(batch.rows, delta);
  }

  async upstreamStep(index: number, dyBytes: Uint8Array, lossSum: number, tokens: number): Promise<StepResult> {
    const pending = this.pending;
    if (!pending || pending.index !== index) throw new WireError('OUT_OF_ORDER', `batch/grad ${index} without its batch/train`);
    this.pending = undefined;
    const d = this.spec.model.hiddenSize;
    const dy = dequantizeRows(dyBytes, pending.batch.rows, d, joinBits(this.spec.config.bits), 0);
    const finite = allFinite([dy]);
    return this.trainer.upstreamStep(pending.layers, pending.batch.rows, pending.batch.lengths, dy, finite ? lossSum : NaN, tokens);
  }

  async forgetPending(): Promise<void> {
    this.pending = undefined;
  }

  async setStartValues(values: Map<string, Float32Array>): Promise<void> {
    this.trainer.setStartValues(values);
  }

  async encode(kind: 'checkpoint' | 'adapter', meta: Record<string, unknown>): Promise<Uint8Array | 'nonFinite'> {
    const { shape, model, config } = this.spec;
    const values = this.trainer.values();
    const opt = kind === 'checkpoint' ? this.trainer.exportState() : undefined;
    const tensors = parameterNames(shape).flatMap((n) => {
      const dims = parameterShape(shape, n);
      const weights = { name: n, shape: dims, data: values.get(n)! };
      return opt ? [weights, { name: `adam.m.${n}`, shape: dims, data: opt.m.get(n)! }, { name: `adam.v.${n}`, shape: dims, data: opt.v.get(n)! }] : [weights];
    });
    if (kind === 'adapter') {
      try {
        checkSideNetworkTensors(shape, new Map(tensors.map((t) => [t.name, t])));
      } catch {
        return 'nonFinite';
      }
    }
    return encodeAdapterSliced(model.fingerprint, adapterConfig(shape, model, config), meta, tensors);
  }

  async dispose(): Promise<void> {
    this.pending = undefined;
    this.trainer.dispose();
  }
}
