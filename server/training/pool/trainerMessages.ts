import type { EncodedBatch, TrainerPosition, TrainerSpec, TrainOutcome } from '../JobTrainer';
import type { ExecutionDevice } from '../onnx/OnnxEngine';
import type { StepResult } from '../onnx/OnnxTrainer';

/**
 * What the server's main thread asks a training worker, and what each request
 * answers: one typed map (as common/messages.ts types the wire). Tensors and
 * payloads cross as transferred ArrayBuffers, never copied; a model's head
 * crosses once per worker as a SharedArrayBuffer the worker copies from.
 */
export interface TrainerCalls {
  /** Starts the worker's ONNX engine and proves its provider (NO_BACKEND otherwise). */
  'engine/start': { params: { device: ExecutionDevice; threads: number }; result: { name: string } };
  /** A model's head: [vocab][d] float16 bits in shared memory (copied by the worker), its final norm weight [d] (then a LayerNorm's bias [d]), d, its epsilon. */
  'head/load': { params: { key: string; halves: SharedArrayBuffer; norm: Float32Array; cols: number; eps: number }; result: void };
  'head/release': { params: { key: string }; result: void };
  /** Opens job `job`'s trainer from its checkpoints (newest first) or fresh weights. */
  'job/open': { params: { job: string; spec: TrainerSpec; headKey?: string; checkpoints: Uint8Array[] }; result: { from?: TrainerPosition; unreadable?: true; step: number } };
  'job/train': { params: { job: string; batch: EncodedBatch }; result: TrainOutcome };
  'job/evaluate': { params: { job: string; batch: EncodedBatch }; result: { lossSum: number; tokens: number } };
  'job/sideOutput': { params: { job: string; batch: EncodedBatch; keepFor?: number }; result: Uint8Array | 'nonFinite' };
  'job/upstreamStep': { params: { job: string; index: number; dy: Uint8Array; lossSum: number; tokens: number }; result: StepResult };
  'job/forgetPending': { params: { job: string }; result: void };
  'job/setStartValues': { params: { job: string; values: Map<string, Float32Array> }; result: void };
  'job/encode': { params: { job: string; kind: 'checkpoint' | 'adapter'; meta: Record<string, unknown> }; result: Uint8Array | 'nonFinite' };
  'job/close': { params: { job: string }; result: void };
}
export type TrainerCall = keyof TrainerCalls;

/** A request to a worker: `id` pairs it with its reply. */
export interface TrainerRequest<C extends TrainerCall = TrainerCall> {
  id: number;
  call: C;
  params: TrainerCalls[C]['params'];
}

/**
 * A worker's reply: the result, or an error as plain data: a wire or server
 * error (code and message, which hold no data) or anything else (its name only).
 */
export type TrainerReply =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { wire?: { code: string; message: string }; server?: { code: string; message: string }; name: string } };
