/** Why an adapter file cannot be used; the codes are the device's own error codes. */
export type AdapterFormatErrorCode = 'ADAPTER_CORRUPT' | 'ADAPTER_VERSION' | 'ADAPTER_MODEL_MISMATCH';

export class AdapterFormatError extends Error {
  constructor(readonly code: AdapterFormatErrorCode, message: string) {
    super(message);
    this.name = 'AdapterFormatError';
  }
}
