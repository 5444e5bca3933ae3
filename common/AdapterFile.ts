import { createHash } from 'node:crypto';
import { AdapterConfig, MAX_HEAD_RANK, parameterCount, parameterNames, parseAdapterConfig, renameOlderShape, sideShape, SideNetworkShape } from './AdapterConfig';
import { JOB_SETTINGS } from './jobSettings';
import { runSteps, runStepsSliced, sha256Sliced, SLICE_BYTES } from './sliced';
import { AdapterFormatError } from './AdapterFormatError';
import { checkSchema } from './schema';

export { AdapterFormatError } from './AdapterFormatError';

/**
 * The adapter file: one self-describing file for a trained side network (and,
 * with optimizer state added, for checkpoints).
 *
 *   "MOBIADPT"                      8 bytes magic
 *   u32 LE header length
 *   header JSON (AdapterHeader)
 *   zero padding to a multiple of 4
 *   tensor data, float32 LE, in the order of header.tensors
 *   sha256 of everything above      32 bytes
 */
export const ADAPTER_MAGIC = 'MOBIADPT';
/**
 * The format this code writes (2: config.shape may describe a version-2 side
 * network; 3: config.shape may join after the final norm, which an older
 * reader would ignore and so run wrongly; 4: config.shape names the design
 * `sideNetwork` and its attention heads `attentionHeads`, once `version` and
 * `heads`; 5: config.shape may carry a head update, `headRank` and `vocab`,
 * with the tensors head_a and head_b, which an older reader would ignore).
 */
export const ADAPTER_FORMAT_VERSION = 5;
/** Every format this code reads (a device refuses others with ADAPTER_VERSION; version 1 holds side network 1 only). */
export const READABLE_ADAPTER_FORMAT_VERSIONS: readonly number[] = [1, 2, 3, 4, 5];

/** Most tensors one adapter file may list. */
const MAX_TENSORS = 4096;

/** Header bytes an adapter may take besides its tensor table (the config and the meta the server writes: steps, tokens, held-out results). */
const HEADER_BASE_BYTES = 64 * 1024;
/** Header bytes one tensor table entry may take (`{"name":"wq.1023","shape":[65536,65536],"offset":…}` is under 80). */
const HEADER_BYTES_PER_TENSOR = 256;

/**
 * The most bytes a trained adapter of side network `shape` can take: magic
 * and length, a header of HEADER_BASE_BYTES and HEADER_BYTES_PER_TENSOR per
 * tensor, padding, the weights and the checksum. A device refuses a download
 * the server declares larger before it writes a byte (for a 2-layer 64-wide
 * job with a head update over 256 tokens: 98 KB, whatever a server says).
 */
export function maxAdapterBytes(shape: SideNetworkShape): number {
  const names = parameterNames(shape);
  return 12 + HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * names.length + 3 + 4 * parameterCount(shape, names) + 32;
}

/**
 * The most bytes any adapter of a model can take: maxAdapterBytes of the
 * largest side network a job's settings allow on it (every layer tapped, the
 * smallest reduction, attention, the highest head rank). An adapter file
 * larger than this is refused before it is read.
 */
export function maxAdapterBytesFor(model: { layers: number; hiddenSize: number; vocabularySize: number }): number {
  const every = Array.from({ length: model.layers }, (_, i) => i);
  return maxAdapterBytes(sideShape(model.hiddenSize, JOB_SETTINGS.reduction.min, every, 2, false, { rank: MAX_HEAD_RANK, vocab: model.vocabularySize }));
}
const TENSOR_ENTRY_SCHEMA = { name: 'string', shape: 'uint[]', offset: 'uint' } as const;

export interface AdapterTensorEntry {
  name: string;
  shape: number[];
  /** Offset in float32 elements from the start of the data section. */
  offset: number;
}

export interface AdapterHeader {
  format: 'mobillm-adapter';
  version: number;
  /** sha256 of the backbone GGUF the adapter was trained for. */
  fingerprint: string;
  /** Side-network shape and constants, and the job's settings (common/AdapterConfig.ts). */
  config: AdapterConfig;
  tensors: AdapterTensorEntry[];
  /** Training metadata: steps, losses, dates. */
  meta: Record<string, unknown>;
}

export interface AdapterContents {
  header: AdapterHeader;
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

/** The adapter file with 32 bytes left at its end for the checksum of everything before them; pauses after each SLICE_BYTES copied. */
function* adapterWithoutChecksum(
  fingerprint: string,
  config: AdapterConfig,
  meta: Record<string, unknown>,
  tensors: { name: string; shape: number[]; data: Float32Array }[],
): Generator<void, Buffer> {
  let offset = 0;
  const entries: AdapterTensorEntry[] = tensors.map((t) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new AdapterFormatError('ADAPTER_CORRUPT', `tensor ${t.name}: shape ${t.shape.join('x')} does not match ${t.data.length} values`);
    const e = { name: t.name, shape: t.shape, offset };
    offset += n;
    return e;
  });
  const header: AdapterHeader = { format: 'mobillm-adapter', version: ADAPTER_FORMAT_VERSION, fingerprint, config, tensors: entries, meta };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (4 - ((12 + json.length) % 4)) % 4;
  const dataStart = 12 + json.length + pad;
  const file = Buffer.allocUnsafe(dataStart + offset * 4 + 32);
  file.write(ADAPTER_MAGIC, 0, 'latin1');
  file.writeUInt32LE(json.length, 8);
  json.copy(file, 12);
  file.fill(0, 12 + json.length, dataStart);
  let copied = 0;
  for (const [i, t] of tensors.entries()) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(file, dataStart + entries[i]!.offset * 4);
    if ((copied += t.data.byteLength) >= SLICE_BYTES) {
      copied = 0;
      yield;
    }
  }
  return file;
}

export function encodeAdapter(
  fingerprint: string,
  config: AdapterConfig,
  meta: Record<string, unknown>,
  tensors: { name: string; shape: number[]; data: Float32Array }[],
): Buffer {
  const file = runSteps(adapterWithoutChecksum(fingerprint, config, meta, tensors));
  createHash('sha256').update(file.subarray(0, file.length - 32)).digest().copy(file, file.length - 32);
  return file;
}

/** encodeAdapter with the checksum computed in slices (a server keeps answering while it writes a large checkpoint). */
export async function encodeAdapterSliced(
  fingerprint: string,
  config: AdapterConfig,
  meta: Record<string, unknown>,
  tensors: { name: string; shape: number[]; data: Float32Array }[],
): Promise<Buffer> {
  const file = await runStepsSliced(adapterWithoutChecksum(fingerprint, config, meta, tensors));
  (await sha256Sliced(file.subarray(0, file.length - 32))).copy(file, file.length - 32);
  return file;
}

/** decodeAdapter with the checksum verified in slices first. */
export async function decodeAdapterSliced(file: Uint8Array, expectFingerprint?: string): Promise<AdapterContents> {
  if (file.length >= 44 && !(await sha256Sliced(file.subarray(0, file.length - 32))).equals(file.subarray(file.length - 32))) {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter file is damaged (checksum mismatch); download it again.');
  }
  return decodeAdapter(file, expectFingerprint, true);
}

/** Parses and verifies an adapter file; `expectFingerprint` checks it belongs to the model. */
export function decodeAdapter(file: Uint8Array, expectFingerprint?: string, checksumVerified = false): AdapterContents {
  const buf = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  if (buf.length < 44 || buf.toString('latin1', 0, 8) !== ADAPTER_MAGIC) {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'This is not a MobiLLM adapter file.');
  }
  const body = buf.subarray(0, buf.length - 32);
  if (!checksumVerified && !createHash('sha256').update(body).digest().equals(buf.subarray(buf.length - 32))) {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter file is damaged (checksum mismatch); download it again.');
  }
  const len = body.readUInt32LE(8);
  let header: AdapterHeader;
  try {
    header = JSON.parse(body.toString('utf8', 12, 12 + len)) as AdapterHeader;
  } catch {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter header is damaged.');
  }
  if (typeof header !== 'object' || header === null || header.format !== 'mobillm-adapter' || !Array.isArray(header.tensors) || header.tensors.length > MAX_TENSORS) {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter header is not a MobiLLM adapter header.');
  }
  if (!READABLE_ADAPTER_FORMAT_VERSIONS.includes(header.version)) {
    throw new AdapterFormatError(
      'ADAPTER_VERSION',
      `The adapter has format version ${String(header.version).slice(0, 20)}; this MobiLLM reads version ${READABLE_ADAPTER_FORMAT_VERSIONS.join(', ')}. Update MobiLLM, or fine-tune again.`,
    );
  }
  if (typeof header.meta !== 'object' || header.meta === null || Array.isArray(header.meta) || typeof header.fingerprint !== 'string') {
    throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter header is damaged.');
  }
  header.config = parseAdapterConfig(header.version < 4 ? renameOlderShape(header.config) : header.config);
  if (expectFingerprint !== undefined && header.fingerprint !== expectFingerprint) {
    throw new AdapterFormatError('ADAPTER_MODEL_MISMATCH', 'The adapter was trained for a different model file.');
  }
  const dataStart = 12 + len + ((4 - ((12 + len) % 4)) % 4);
  const dataFloats = (body.length - dataStart) / 4;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  // The table must tile the data section exactly: in order, no overlap, no gap, nothing outside.
  let next = 0;
  for (const t of header.tensors as unknown[]) {
    const problem = checkSchema(t, TENSOR_ENTRY_SCHEMA, 'tensor');
    if (problem) throw new AdapterFormatError('ADAPTER_CORRUPT', `The adapter tensor table is damaged: ${problem}.`);
    const { name, shape, offset } = t as AdapterTensorEntry;
    if (tensors.has(name) || shape.length > 4 || shape.some((x) => x < 1)) throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter tensor table is damaged.');
    const n = shape.reduce((x, y) => x * y, 1);
    if (offset !== next || n > dataFloats - offset) throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter tensor table overlaps itself or points outside the file.');
    const start = dataStart + offset * 4;
    const data = new Float32Array(n);
    Buffer.from(data.buffer).set(body.subarray(start, start + n * 4));
    tensors.set(name, { shape, data });
    next = offset + n;
  }
  if (next !== dataFloats) throw new AdapterFormatError('ADAPTER_CORRUPT', 'The adapter has data its tensor table does not describe.');
  return { header, tensors };
}
