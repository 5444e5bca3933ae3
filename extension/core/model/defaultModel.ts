import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from './tinyModel';

/** The built-in default backbone: a small random-weight llama model in Q8_0, created once in the store. */
export const DEFAULT_MODEL_SHAPE = { layers: 4, embd: 128, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 1 };

export function ensureDefaultModel(storeDir: string): string {
  const file = path.join(storeDir, 'models', 'mobillm-tiny-4x128-q8_0.gguf');
  if (!fs.existsSync(file)) writeTinyModel({ ...DEFAULT_MODEL_SHAPE, out: file });
  return file;
}
