/**
 * The device <-> server wire contract: one typed map of messages per
 * direction. Each entry's schema (common/schema.ts) is the run-time validator
 * and the compile-time type. docs/protocol.md documents who sends each
 * message and when.
 */
import { JOB_STATES } from './JobState';
import { JOB_SETTINGS } from './jobSettings';
import { Schema, Fields, optionalOneOf } from './schema';
import { WIRE_ERROR_CODES } from './WireError';

const ModelSpec = {
  /** sha256 of the GGUF file: the server caches the head under it. */
  fingerprint: 'string',
  architecture: 'string',
  layers: 'uint',
  hiddenSize: 'uint',
  vocabularySize: 'uint',
  /** Epsilon of the backbone's final RMSNorm (GGUF metadata). */
  normEpsilon: 'number',
  /** The model's final logit soft cap c (logits c tanh(l / c), gemma2); absent or 0: none. */
  softCap: 'number?',
  /** 'layer': the final norm is a LayerNorm with a bias (starcoder2), whose bias follows the weight in the head upload; absent or 'rms': RMSNorm. */
  normKind: 'string?',
  /**
   * sha256 of the head upload's content, computed by the device from its model
   * file: the f32 norm weight, then the f16 head rows in order. The server
   * keeps heads under (fingerprint, headDigest) and verifies uploads against it.
   */
  headDigest: 'string',
} as const satisfies Schema;

export const JobConfigSchema = {
  /** Backbone layers whose outputs are sent (the last layer is always included). */
  tappedLayers: 'uint[]',
  /** Side width r = hiddenSize / reduction. */
  reduction: 'uint',
  /** Activation width on the wire (common/jobSettings.ts). */
  bits: JOB_SETTINGS.bits.values,
  seqLen: 'uint',
  batchSize: 'uint',
  /** Training batches of the whole job (one optimizer step each). */
  totalSteps: 'uint',
  learningRate: 'number',
  warmupSteps: 'uint',
  seed: 'uint',
  /** Write a checkpoint every this many steps (and at the end). */
  checkpointEvery: 'uint',
  /**
   * Label-private training: batches carry activations only; the server sends
   * back the side network's output at the join (batch/side, eval/side), the
   * device computes the loss with the model's own head and sends its gradient
   * (batch/grad). No target id reaches the server, and it needs no head.
   */
  labelPrivate: 'boolean?',
  /** The side network's design: 1 (absent) the per-token ladder, 2 with causal self-attention (common/AdapterConfig.ts). */
  sideNetwork: optionalOneOf(JOB_SETTINGS.sideNetwork.values),
  /** Join the side network's output after the backbone's final norm (common/AdapterConfig.ts); standard mode only. */
  joinAfterNorm: 'boolean?',
  /** Rank of the head update trained beside the side network (absent: none; common/AdapterConfig.ts); standard mode only. */
  headRank: 'uint?',
  /**
   * The side network starts from a reduced copy of the backbone's weights,
   * computed on the device and sent as job/create's payload (float32 LE, the
   * parameters of backboneInitNames in order); otherwise from seeded random values.
   */
  initFromBackbone: 'boolean?',
  /**
   * An update: the side network (and head update) start from the device's
   * earlier adapter, sent as job/create's payload (float32 LE, every
   * parameter of parameterNames in order).
   */
  initFromAdapter: 'boolean?',
} as const satisfies Schema;
export type JobConfig = Fields<typeof JobConfigSchema>;
export type ModelSpec = Fields<typeof ModelSpec>;

/** Messages the device sends. */
export const DeviceMessages = {
  /** First message of every connection. */
  'session/hello': { protocol: 'uint', client: 'string', model: ModelSpec, requestId: 'uint?' },
  /** Head upload, once per fingerprint, when welcome says headCached=false. Payload: output_norm weight, f32 [cols]. */
  'head/begin': { rows: 'uint', cols: 'uint' },
  /** Payload: head rows [rowStart, rowStart+rowCount) as f16 [rowCount][cols]. */
  'head/chunk': { rowStart: 'uint', rowCount: 'uint' },
  /** All rows sent; the server verifies and stores the head. */
  'head/end': { requestId: 'uint?' },
  /** Create a job for this session's model. */
  'job/create': { name: 'string', config: JobConfigSchema, requestId: 'uint?' },
  /** Continue a job (after a drop or a server restart): the server answers job/ready with the index to resend from. */
  /** fromCheckpoint: open the job again from its last stored checkpoint, dropping the steps after it (a device whose own half of the job, its head update, is at that checkpoint). */
  'job/resume': { jobId: 'uuid', fromCheckpoint: 'boolean?', requestId: 'uint?' },
  /** The user's jobs. */
  'job/list': { requestId: 'uint?' },
  /** A training batch. Payload: see batchPayload.ts. Consumes one credit. */
  /** `lengths`: the batch's sequences, in order (they sum to rows); a version-2 side network needs them. */
  'batch/train': { jobId: 'uuid', index: 'uint', rows: 'uint', lengths: 'uint[]?' },
  /** A held-out batch: evaluated with the current side network, not trained. */
  'batch/eval': { jobId: 'uuid', evalId: 'string', index: 'uint', rows: 'uint', lengths: 'uint[]?' },
  /**
   * Label-private: the loss of training batch `index` (sum over its masked
   * tokens, computed on the device) and, as payload, its gradient at the join
   * [rows][d], quantized like the activations. The server steps and acks.
   */
  'batch/grad': { jobId: 'uuid', index: 'uint', rows: 'uint', lossSum: 'number', tokens: 'uint' },
  /** All training batches sent: checkpoint and write the adapter. */
  'job/finish': { jobId: 'uuid', requestId: 'uint?' },
  /** Stop the job; its last checkpoint stays resumable. */
  'job/cancel': { jobId: 'uuid', requestId: 'uint?' },
  /** Download part of the adapter of a finished job, from byte `offset` (absent: 0); adapter/data answers with up to ADAPTER_CHUNK_BYTES. */
  'adapter/get': { jobId: 'uuid', offset: 'uint?', requestId: 'uint?' },
} as const satisfies Record<string, Schema>;

/** Messages the server sends. */
export const ServerMessages = {
  'session/welcome': { protocol: 'uint', server: 'string', backend: 'string', headCached: 'boolean', credits: 'uint', requestId: 'uint?' },
  'head/stored': { fingerprint: 'string', requestId: 'uint?' },
  /** The job exists and accepts batches from nextIndex on. */
  'job/ready': { jobId: 'uuid', nextIndex: 'uint', step: 'uint', state: JOB_STATES, requestId: 'uint?' },
  /** A training batch was applied (one optimizer step); returns one credit. */
  'batch/ack': { jobId: 'uuid', index: 'uint', step: 'uint', loss: 'number', learningRate: 'number', tokens: 'uint', seconds: 'number', skipped: 'boolean?' },
  'eval/result': { jobId: 'uuid', evalId: 'string', index: 'uint', lossSum: 'number', tokens: 'uint' },
  /** Label-private: the side network's output at the join for training batch `index`. Payload: [rows][d], quantized like the activations. */
  'batch/side': { jobId: 'uuid', index: 'uint', rows: 'uint' },
  /** Label-private: the same for a held-out batch (the device computes its loss). */
  'eval/side': { jobId: 'uuid', evalId: 'string', index: 'uint', rows: 'uint' },
  /**
   * A batch of the job waits for the server's training worker behind `ahead`
   * operations of other jobs (the server shares its workers round-robin per
   * user): its acknowledgement, and so the credit, comes later. At most once
   * a second per job.
   */
  'job/waiting': { jobId: 'uuid', ahead: 'uint' },
  /** A checkpoint is durable: batches below nextIndex never need resending. */
  'job/checkpoint': { jobId: 'uuid', step: 'uint', nextIndex: 'uint' },
  /** The job ended (finished or cancelled); the adapter is ready when finished. */
  'job/done': { jobId: 'uuid', step: 'uint', state: JOB_STATES, requestId: 'uint?' },
  'job/list/result': { jobs: 'json', requestId: 'uint?' },
  /** Payload: the adapter file's bytes from `offset` on (at most ADAPTER_CHUNK_BYTES); `bytes` and `sha256` are the whole file's. */
  'adapter/data': { jobId: 'uuid', bytes: 'uint', sha256: 'string', offset: 'uint', requestId: 'uint?' },
  /** `requestId`: the request this error answers (absent for an error of a streamed batch, which names its `jobId`, or of an undecodable frame). */
  'error': { code: WIRE_ERROR_CODES, message: 'string', fatal: 'boolean', jobId: 'uuid?', location: 'string?', requestId: 'uint?' },
} as const satisfies Record<string, Schema>;

export type DeviceMessageType = keyof typeof DeviceMessages;
export type ServerMessageType = keyof typeof ServerMessages;

/**
 * The reply each request gets, in one place (the server answers with it, or
 * with an `error`). A request carries a `requestId` (the device numbers its
 * requests) and its reply, or the error that answers it, echoes that id.
 * Messages not listed here are streamed: a training batch is answered by
 * batch/ack (or, label-private, batch/side then batch/ack), a held-out batch
 * by eval/result (or eval/side), head chunks by nothing.
 */
export const Replies = {
  'session/hello': 'session/welcome',
  'head/end': 'head/stored',
  'job/create': 'job/ready',
  'job/resume': 'job/ready',
  'job/list': 'job/list/result',
  'job/finish': 'job/done',
  'job/cancel': 'job/done',
  'adapter/get': 'adapter/data',
} as const satisfies Partial<Record<DeviceMessageType, ServerMessageType>>;
export type RequestType = keyof typeof Replies;
/** The reply type of request R: awaiting any other does not compile. */
export type ReplyOf<R extends RequestType> = (typeof Replies)[R];
/** Request R's reply as both sides handle it: what a server handler returns (the session adds the request's id) and what the device's request resolves with. */
export interface Reply<R extends RequestType, P extends Uint8Array = Uint8Array> {
  message: ServerMessage<ReplyOf<R>>;
  payload?: P;
}
/** What the server's handler of device message T returns: a request's Reply, nothing for a streamed message (a handler returning another reply does not compile). */
export type Answer<T extends DeviceMessageType> = T extends RequestType ? Reply<T> : void;
export type DeviceMessage<T extends DeviceMessageType = DeviceMessageType> = T extends DeviceMessageType
  ? { type: T } & Fields<(typeof DeviceMessages)[T]>
  : never;
export type ServerMessage<T extends ServerMessageType = ServerMessageType> = T extends ServerMessageType
  ? { type: T } & Fields<(typeof ServerMessages)[T]>
  : never;
