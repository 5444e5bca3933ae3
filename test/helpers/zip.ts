import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';

/** A native file of a package: a shared library or an addon, on any platform. */
export const isNative = (name: string): boolean => /\.(so(\.\d+)*|node|dll|dylib)$/.test(name);

/** What tests read of a package (.vsix): its zip entries. */
export interface ZipEntry {
  name: string;
  compressed: number;
  size: number;
  /** The entry's content, inflated. */
  read(): Buffer;
}

/** The entries of a zip file, from its central directory (no extraction). */
export function zipEntries(file: string): ZipEntry[] {
  const zip = fs.readFileSync(file);
  let end = zip.length - 22;
  while (end >= 0 && zip.readUInt32LE(end) !== 0x06054b50) end--;
  assert.ok(end >= 0, 'the vsix has a zip end record');
  const count = zip.readUInt16LE(end + 10);
  let at = zip.readUInt32LE(end + 16);
  const entries: ZipEntry[] = [];
  for (let i = 0; i < count; i++) {
    assert.equal(zip.readUInt32LE(at), 0x02014b50, 'central directory entry');
    const nameLength = zip.readUInt16LE(at + 28);
    const extra = zip.readUInt16LE(at + 30);
    const comment = zip.readUInt16LE(at + 32);
    const method = zip.readUInt16LE(at + 10);
    const compressed = zip.readUInt32LE(at + 20);
    const local = zip.readUInt32LE(at + 42);
    const read = (): Buffer => {
      const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
      const data = zip.subarray(start, start + compressed);
      return method === 8 ? zlib.inflateRawSync(data) : Buffer.from(data);
    };
    entries.push({ name: zip.toString('utf8', at + 46, at + 46 + nameLength), compressed, size: zip.readUInt32LE(at + 24), read });
    at += 46 + nameLength + extra + comment;
  }
  return entries;
}
