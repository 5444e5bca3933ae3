import type { NativeErrorCode } from '../native/NativeAddon';

/**
 * The one error class of the device core. Every failure a person can meet has
 * a stable code; hosts (VS Code, CLI) choose what to show by code, never by
 * message text. Messages say what happened and what to do, and never contain
 * source text, prompts or activations.
 */
export const ERROR_CODES = [
  'MODEL_NOT_FOUND',
  'NOT_GGUF',
  'TRUNCATED_GGUF',
  'UNSUPPORTED_ARCHITECTURE',
  'MODEL_LOAD_FAILED',
  'CONTEXT_FAILED',
  'NATIVE_ADDON_MISSING',
  'NO_BACKEND',
  'DISPOSED',
  'NOT_LOADED',
  'BUSY',
  'EMPTY_INPUT',
  'CONTEXT_OVERFLOW',
  'LAYER_OUT_OF_RANGE',
  'BAD_TOKEN',
  'BAD_ARGUMENT',
  'NO_SUCH_TENSOR',
  'UNSUPPORTED_TYPE',
  'TOKENIZE_FAILED',
  'DECODE_FAILED',
  'CAPTURE_FAILED',
  'IO_ERROR',
  'EMPTY_WORKSPACE',
  'SERVER_UNREACHABLE',
  'UNAUTHORIZED',
  'VERSION_MISMATCH',
  'MODEL_MISMATCH',
  'SERVER_ERROR',
  'CONNECTION_LOST',
  'NO_SUCH_JOB',
  'CANCELLED',
  'ADAPTER_CORRUPT',
  'ADAPTER_MODEL_MISMATCH',
  'ADAPTER_VERSION',
  'ALREADY_LOADED',
  'JOB_MOVED',
  'STORE_UNAVAILABLE',
  'LOCAL_SERVER_STOPPED',
  'UP_TO_DATE',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Every code the native layer raises is one of ours (this fails to compile otherwise), so MobiError.from keeps it. */
const NATIVE_CODES_ARE_KNOWN: NativeErrorCode extends ErrorCode ? true : never = true;
void NATIVE_CODES_ARE_KNOWN;

export class MobiError extends Error {
  readonly code: ErrorCode;
  /** The host setting that was refused (e.g. `mobillm.bits`), for a host to open it. */
  readonly setting?: string;
  /** JOB_MOVED: the address of the server replica that trains the job, when the server named it. */
  readonly location?: string;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; setting?: string; location?: string }) {
    super(message, options);
    this.name = 'MobiError';
    this.code = code;
    if (options?.setting) this.setting = options.setting;
    if (options?.location) this.location = options.location;
  }

  static is(value: unknown, code?: ErrorCode): value is MobiError {
    return value instanceof MobiError && (code === undefined || value.code === code);
  }

  /**
   * The one conversion of any thrown value to a MobiError: a MobiError as it
   * is; an error that carries one of our codes (the native addon's errors,
   * common/'s AdapterFormatError) with that code; anything else as IO_ERROR.
   */
  static from(err: unknown): MobiError {
    if (err instanceof MobiError) return err;
    const code = (err as { code?: unknown } | null | undefined)?.code;
    const message = err instanceof Error ? err.message : String(err);
    if (typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code)) {
      return new MobiError(code as ErrorCode, message, { cause: err });
    }
    return new MobiError('IO_ERROR', message, { cause: err });
  }
}
