import { MAX_FRAME_BYTES, MAX_HEADER_BYTES, PROTOCOL_VERSION } from './limits';
import { DeviceMessages, DeviceMessage, ServerMessages, ServerMessage } from './messages';
import { checkSchema, Schema } from './schema';
import { WireError } from './WireError';

/**
 * One binary WebSocket frame: [u32 LE header length][header JSON][payload].
 * The header is `{ "v": PROTOCOL_VERSION, "type": ..., ...fields }`; the
 * payload holds bulk data (activations, head rows, adapter bytes).
 */
export interface Frame<M> {
  message: M;
  payload: Buffer;
}

export function encodeFrame(message: { type: string; [field: string]: unknown }, payload?: Uint8Array): Buffer {
  return Buffer.concat(encodeFrameParts(message, payload));
}

/**
 * A frame as its length prefix and header, then its payload (a view, not a
 * copy; absent when empty): what a sender that writes them one after the
 * other (ServerConnection) uses, so a batch's payload is never copied.
 */
export function encodeFrameParts(message: { type: string; [field: string]: unknown }, payload?: Uint8Array): [Buffer] | [Buffer, Buffer] {
  const header = Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, ...message }), 'utf8');
  if (header.length > MAX_HEADER_BYTES) throw new WireError('TOO_BIG', 'frame header too large');
  const head = Buffer.allocUnsafe(4 + header.length);
  head.writeUInt32LE(header.length);
  header.copy(head, 4);
  const bytes = head.length + (payload?.byteLength ?? 0);
  if (bytes > MAX_FRAME_BYTES) throw new WireError('TOO_BIG', `frame of ${bytes} bytes exceeds ${MAX_FRAME_BYTES}`);
  return payload && payload.byteLength > 0 ? [head, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)] : [head];
}

function decodeWith<M>(data: Buffer, table: Record<string, Schema>): Frame<M> {
  if (data.length > MAX_FRAME_BYTES) throw new WireError('TOO_BIG', `frame of ${data.length} bytes exceeds ${MAX_FRAME_BYTES}`, true);
  if (data.length < 4) throw new WireError('BAD_FRAME', 'frame shorter than its length prefix', true);
  const headerLen = data.readUInt32LE(0);
  if (headerLen === 0 || headerLen > MAX_HEADER_BYTES || 4 + headerLen > data.length) {
    throw new WireError('BAD_FRAME', 'frame header length out of range', true);
  }
  let header: unknown;
  try {
    header = JSON.parse(data.toString('utf8', 4, 4 + headerLen));
  } catch {
    throw new WireError('BAD_FRAME', 'frame header is not JSON', true);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new WireError('BAD_FRAME', 'frame header is not an object', true);
  const h = header as Record<string, unknown>;
  if (h.v !== PROTOCOL_VERSION) {
    throw new WireError('VERSION_MISMATCH', `protocol version ${String(h.v)} is not supported; this peer speaks ${PROTOCOL_VERSION}`, true);
  }
  if (typeof h.type !== 'string' || !Object.prototype.hasOwnProperty.call(table, h.type)) {
    throw new WireError('UNKNOWN_TYPE', `unknown message type ${typeof h.type === 'string' ? JSON.stringify(h.type.slice(0, 40)) : ''}`);
  }
  const problem = checkSchema(h, table[h.type]!);
  if (problem) throw new WireError('BAD_FRAME', `${h.type}: ${problem}`);
  delete h.v;
  return { message: h as M, payload: data.subarray(4 + headerLen) };
}

/** Decodes and validates a frame the device sent (run by the server). */
export function decodeDeviceFrame(data: Buffer): Frame<DeviceMessage> {
  return decodeWith<DeviceMessage>(data, DeviceMessages);
}

/** Decodes and validates a frame the server sent (run by the device). */
export function decodeServerFrame(data: Buffer): Frame<ServerMessage> {
  return decodeWith<ServerMessage>(data, ServerMessages);
}
