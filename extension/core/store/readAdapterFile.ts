import * as fs from 'node:fs';
import { MobiError } from '../MobiError';

/** Opening a FIFO or a device must not wait for a writer (the file is refused after fstat anyway). */
const OPEN_FLAGS = fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0);

/**
 * An adapter file's bytes, read with a bound: opened once, checked with fstat
 * before a byte is read (a regular file of at most `maxBytes`: for a model,
 * maxAdapterBytesFor), then read up to the size fstat gave. `/dev/zero`, a
 * folder, a FIFO or a file larger than any adapter of the model is refused
 * with ADAPTER_CORRUPT, as is a file that cannot be read; nothing larger
 * than the bound is ever allocated.
 */
export async function readAdapterFile(file: string, maxBytes: number): Promise<Buffer> {
  let handle: fs.promises.FileHandle;
  try {
    handle = await fs.promises.open(file, OPEN_FLAGS);
  } catch (err) {
    throw new MobiError('ADAPTER_CORRUPT', `Cannot read the adapter file ${file}.`, { cause: err });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new MobiError('ADAPTER_CORRUPT', `${file} is not an adapter file (it is not a regular file).`);
    if (st.size > maxBytes) throw new MobiError('ADAPTER_CORRUPT', `${file} is not an adapter for this model: it has ${st.size} bytes, and an adapter for this model has at most ${maxBytes}.`);
    const bytes = Buffer.alloc(st.size);
    let at = 0;
    while (at < bytes.length) {
      const { bytesRead } = await handle.read(bytes, at, bytes.length - at, at);
      if (bytesRead === 0) break; // it shrank
      at += bytesRead;
    }
    if (at !== bytes.length) throw new MobiError('ADAPTER_CORRUPT', `The adapter file ${file} changed while it was read; try again.`);
    return bytes;
  } catch (err) {
    throw MobiError.is(err) ? err : new MobiError('ADAPTER_CORRUPT', `Cannot read the adapter file ${file}.`, { cause: err });
  } finally {
    await handle.close();
  }
}
