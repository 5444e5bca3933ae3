import * as fs from 'node:fs';
import { loadNativeAddon } from '../../native/NativeAddon';
import { MobiError } from '../MobiError';
import { defaultThreads, FILE_TYPE_NAMES } from './Backbone';

/** The layouts people download, by llama.cpp's file-type name. */
export type QuantizedLayout = 'Q8_0' | 'Q5_K_M' | 'Q4_K_M';

/**
 * Rewrites a float GGUF (F32 or F16) into `layout` with llama.cpp's own
 * quantizer, which picks each tensor's type as its llama-quantize tool does
 * (mixed types: Q6_K for the head and some layers in Q4_K_M, and so on; a
 * matrix whose rows do not divide into K-quant blocks of 256 gets llama.cpp's
 * fallback type). Runs on a worker thread.
 */
export async function quantizeModel(input: string, output: string, layout: QuantizedLayout, threads = defaultThreads()): Promise<void> {
  const fileType = Object.entries(FILE_TYPE_NAMES).find(([, name]) => name === layout)?.[0];
  if (fileType === undefined) throw new MobiError('BAD_ARGUMENT', `Unknown layout ${String(layout)}; use Q8_0, Q5_K_M or Q4_K_M.`);
  if (!fs.existsSync(input)) throw new MobiError('MODEL_NOT_FOUND', `The model file ${input} does not exist.`);
  const addon = await loadNativeAddon();
  try {
    await addon.quantizeModel(input, output, { fileType: Number(fileType), threads });
  } catch (err) {
    fs.rmSync(output, { force: true });
    throw MobiError.from(err);
  }
}
