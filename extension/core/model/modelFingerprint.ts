import { createHash } from 'node:crypto';
import * as fs from 'node:fs';

const cache = new Map<string, string>();

/** sha256 of a model file (hex), cached per path, size and modification time. */
export async function modelFingerprint(file: string): Promise<string> {
  const st = fs.statSync(file);
  const key = `${file}:${st.size}:${st.mtimeMs}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk as Buffer);
  const hex = hash.digest('hex');
  cache.set(key, hex);
  return hex;
}
