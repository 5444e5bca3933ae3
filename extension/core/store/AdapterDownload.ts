import { sha256Sliced } from '../../../common/sliced';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { UUID_PATTERN } from '../../../common/schema';
import type { ServerConnection } from '../connection/ServerConnection';
import { MobiError } from '../MobiError';

/** What the server says of the whole adapter. */
export interface AdapterSize {
  bytes: number;
  sha256: string;
}

/**
 * An adapter arriving in parts, kept on disk in the device store
 * (`<store>/downloads/<jobId>.part`, its expected size and sha256 beside it
 * in `<jobId>.json`), so a dropped connection resumes where it stopped. The
 * whole file is checked against the server's sha256 before it is used;
 * remove() deletes the partial once the adapter is stored.
 */
export class AdapterDownload {
  private readonly part: string;
  private readonly info: string;

  constructor(storeDir: string, jobId: string) {
    if (!UUID_PATTERN.test(jobId)) throw new MobiError('NO_SUCH_JOB', 'not a job id');
    const dir = path.join(storeDir, 'downloads');
    this.part = path.join(dir, `${jobId}.part`);
    this.info = path.join(dir, `${jobId}.json`);
  }

  /** The byte to ask for next: what a partial of this same adapter already holds (0 for another adapter or none). */
  offset(expected?: AdapterSize): number {
    try {
      const known = JSON.parse(fs.readFileSync(this.info, 'utf8')) as AdapterSize;
      if (expected && (known.sha256 !== expected.sha256 || known.bytes !== expected.bytes)) return 0;
      return Math.min(fs.statSync(this.part).size, known.bytes);
    } catch {
      return 0;
    }
  }

  /**
   * Writes a part that starts at `offset` of an adapter of `size`: the first
   * part starts the partial afresh; a later one must continue it (refused
   * otherwise). Returns the next offset.
   */
  write(size: AdapterSize, offset: number, data: Uint8Array): number {
    // Checked before anything is written: a part past the declared size (a first part included).
    if (offset + data.length > size.bytes) throw new MobiError('ADAPTER_CORRUPT', 'The server sent more of the adapter than it declared; the download was stopped. Try again.');
    if (offset === 0) {
      fs.mkdirSync(path.dirname(this.part), { recursive: true });
      writeFileAtomic(this.info, `${JSON.stringify(size)}\n`);
      fs.writeFileSync(this.part, new Uint8Array(0));
    }
    if (offset !== this.offset(size)) throw new MobiError('ADAPTER_CORRUPT', 'The adapter arrived out of order; try again.');
    fs.appendFileSync(this.part, data);
    return offset + data.length;
  }

  /** The whole adapter once every byte arrived and its sha256 matches (read and hashed off the event loop); ADAPTER_CORRUPT (and the partial deleted) otherwise. */
  async complete(size: AdapterSize): Promise<Buffer> {
    const bytes = await fs.promises.readFile(this.part);
    if (bytes.length !== size.bytes || (await sha256Sliced(bytes)).toString('hex') !== size.sha256) {
      this.remove();
      throw new MobiError('ADAPTER_CORRUPT', 'The downloaded adapter does not match the server\'s checksum; it was discarded, try again.');
    }
    return bytes;
  }

  remove(): void {
    fs.rmSync(this.part, { force: true });
    fs.rmSync(this.info, { force: true });
  }
}

/**
 * Downloads a finished job's adapter in parts (adapter/get from an offset),
 * resuming a partial left by an earlier connection, and returns the whole
 * file once its sha256 matches. A declared size over `maxBytes` (the most
 * the job's side network can take: maxAdapterBytes) is refused before a byte
 * is written, and so is a part past the declared size. The partial is deleted by the caller once
 * the adapter is stored (AdapterDownload.remove).
 */
export async function downloadAdapter(conn: ServerConnection, download: AdapterDownload, jobId: string, maxBytes: number): Promise<Buffer> {
  let offset = download.offset();
  for (;;) {
    const asked = offset;
    const { message, payload } = await conn.request({ type: 'adapter/get', jobId, offset: asked });
    const size = { bytes: message.bytes, sha256: message.sha256 };
    if (size.bytes > maxBytes) {
      download.remove();
      throw new MobiError('ADAPTER_CORRUPT', `The server declared an adapter of ${size.bytes} bytes; this job's adapter is at most ${maxBytes} bytes. Nothing of it was stored; check which server you are connected to.`);
    }
    if (asked !== download.offset(size)) {
      offset = 0; // a partial of another adapter (the job was finished anew): start over
      continue;
    }
    offset = download.write(size, asked, payload);
    if (offset >= size.bytes) return download.complete(size);
    if (payload.length === 0) throw new MobiError('ADAPTER_CORRUPT', 'The server sent an empty part of the adapter; try again.');
  }
}
