import type { SideNetworkShape } from '../../common/AdapterConfig';
import type { JobConfig, ModelSpec } from '../../common/messages';
import type { StoredHead } from '../storage/records';
import type { ExecutionDevice } from './onnx/OnnxEngine';
import type { StepResult } from './onnx/OnnxTrainer';

/**
 * Where a job's side network trains, seen from the job (TrainingJob): in this
 * thread (LocalTrainers: the unit tests, and whatever needs no event loop) or
 * in a worker thread of the server's pool (TrainerPool). Batches arrive as
 * the device encoded them, so decoding, checks, training and checkpoint
 * encoding all run where the trainer lives; only numbers and bytes return.
 */

/** What a trainer knows of its job (plain data: it crosses to a worker). */
export interface TrainerSpec {
  shape: SideNetworkShape;
  model: Pick<ModelSpec, 'fingerprint' | 'layers' | 'hiddenSize' | 'normEpsilon' | 'vocabularySize' | 'softCap'>;
  config: JobConfig;
}

/** A batch as the device sent it: the frame's payload (activations at the job's bits, then targets and mask in the standard mode), its rows and sequences. */
export interface EncodedBatch {
  payload: Uint8Array;
  rows: number;
  lengths?: number[];
}

/** A step's result, or `nonFinite` when the batch's activations were not all finite (nothing was trained). */
export type TrainOutcome = StepResult | 'nonFinite';

/** Where a job stands in the checkpoint it was opened from. */
export interface TrainerPosition {
  step: number;
  nextIndex: number;
  trainTokens: number;
}

export interface JobTrainer {
  /** Optimizer steps done. */
  readonly step: number;
  /** The thread that held the trainer stopped: every call fails, and the job must be opened again from its checkpoint. */
  readonly lost?: boolean;
  /** Told how many operations of other jobs are ahead when one of this job's waits for its thread. */
  onWaiting?: ((ahead: number) => void) | undefined;
  /** Standard mode: one optimizer step on a batch with its targets. */
  train(batch: EncodedBatch): Promise<TrainOutcome>;
  /** Standard mode: the held-out loss of a batch (BAD_FRAME for non-finite activations). */
  evaluate(batch: EncodedBatch): Promise<{ lossSum: number; tokens: number }>;
  /**
   * Label-private: the side network's output at the join, quantized at the
   * join's bits. With `keepFor`, the batch's layers are kept for that
   * training batch's step (upstreamStep); without, it is a held-out batch
   * (BAD_FRAME for non-finite activations).
   */
  sideOutput(batch: EncodedBatch, keepFor?: number): Promise<Uint8Array | 'nonFinite'>;
  /** Label-private: one step from the device's gradient at the join (quantized) for the batch kept for `index`. */
  upstreamStep(index: number, dy: Uint8Array, lossSum: number, tokens: number): Promise<StepResult>;
  /** Label-private: forgets the layers kept for a batch whose gradient will not come. */
  forgetPending(): Promise<void>;
  /** Replaces starting values before the first step (a job initialised from the backbone). */
  setStartValues(values: Map<string, Float32Array>): Promise<void>;
  /** The weights as an adapter file (`adapter`; `nonFinite` when they are not all finite) or, with Adam's moments, a checkpoint. */
  encode(kind: 'checkpoint' | 'adapter', meta: Record<string, unknown>): Promise<Uint8Array | 'nonFinite'>;
  /** Frees the trainer (its sessions may stay for the next job of its shape). */
  dispose(): Promise<void>;
}

/** What opening a job's trainer needs: the job's key and user (the pool schedules by user), its spec, its model head (standard mode) and its stored checkpoints, newest first. */
export interface OpenTrainer {
  job: string;
  user: string;
  spec: TrainerSpec;
  headKey?: string;
  checkpoints: Uint8Array[];
}

/** An opened trainer and the checkpoint it starts from (undefined: fresh weights), or `unreadable`: checkpoints were given and none could be read. */
export type OpenedTrainer = { trainer: JobTrainer; from?: TrainerPosition } | { unreadable: true };

/** The server's training engine behind one interface: heads loaded once per model, trainers opened per job. */
export interface Trainers {
  /** Engine and provider, as /healthz, /metrics and session/welcome report them. */
  readonly name: string;
  readonly device: ExecutionDevice;
  /** Intra-op threads per trainer. */
  readonly threads: number;
  /** Worker threads training (0: this thread). */
  readonly workers: number;
  /** Makes a model's frozen head available to trainers under `key` (until releaseHead). */
  loadHead(key: string, head: StoredHead, eps: number): Promise<void>;
  releaseHead(key: string): void;
  open(request: OpenTrainer): Promise<OpenedTrainer>;
  dispose(): Promise<void>;
}
