import { createHash, randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../common/atomicWrite';
import { ServerError } from '../ServerError';

interface UserRecord {
  name: string;
  salt: string;
  /** scrypt(secret, salt), hex. The token itself is never stored. */
  hash: string;
  createdAt: string;
  revokedAt?: string;
}

export interface UserSummary {
  name: string;
  createdAt: string;
  revoked: boolean;
}

export const USER_NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const SCRYPT_KEYLEN = 32;

/**
 * Team members and their tokens, in `<data>/users.json`. A token is
 * `<name>.<secret>`; only scrypt(secret) is stored. The file is re-read when
 * it changes, so `mobillm-server users revoke` takes effect on a running
 * server at the next connection.
 */
export class UserStore {
  private readonly file: string;
  private users: UserRecord[] = [];
  private loadedMtime = -1;
  /** sha256(token) -> name, for tokens already verified (scrypt is slow on purpose). */
  private readonly verified = new Map<string, string>();

  constructor(dataDir: string) {
    this.file = path.join(dataDir, 'users.json');
  }

  private refresh(): void {
    let mtime: number;
    try {
      mtime = fs.statSync(this.file).mtimeMs;
    } catch {
      this.users = [];
      this.loadedMtime = -1;
      this.verified.clear();
      return;
    }
    if (mtime === this.loadedMtime) return;
    this.users = (JSON.parse(fs.readFileSync(this.file, 'utf8')) as { users: UserRecord[] }).users;
    this.loadedMtime = mtime;
    this.verified.clear();
  }

  private save(): void {
    writeFileAtomic(this.file, `${JSON.stringify({ users: this.users }, null, 2)}\n`);
    this.loadedMtime = -1;
  }

  /** Creates a user and returns its token (shown once, never stored). */
  add(name: string): string {
    this.refresh();
    if (!USER_NAME_PATTERN.test(name)) throw new ServerError('BAD_NAME', 'User names are 1-32 characters: a-z, 0-9, "-" and "_".');
    if (this.users.some((u) => u.name === name && !u.revokedAt)) throw new ServerError('EXISTS', `User ${name} exists; revoke it first to issue a new token.`);
    const secret = randomBytes(24).toString('base64url');
    const salt = randomBytes(16).toString('hex');
    const hash = scryptSync(secret, salt, SCRYPT_KEYLEN).toString('hex');
    this.users = this.users.filter((u) => u.name !== name);
    this.users.push({ name, salt, hash, createdAt: new Date().toISOString() });
    this.save();
    return `${name}.${secret}`;
  }

  revoke(name: string): void {
    this.refresh();
    const u = this.users.find((x) => x.name === name && !x.revokedAt);
    if (!u) throw new ServerError('NO_SUCH_USER', `No active user ${name}.`);
    u.revokedAt = new Date().toISOString();
    this.save();
    this.verified.clear();
  }

  list(): UserSummary[] {
    this.refresh();
    return this.users.map((u) => ({ name: u.name, createdAt: u.createdAt, revoked: u.revokedAt !== undefined }));
  }

  /** The user name a token claims (before it is checked), for rate limits. */
  static claimedName(token: string | undefined): string | undefined {
    const dot = token?.indexOf('.') ?? -1;
    return token && dot > 0 && dot <= 32 ? token.slice(0, dot) : undefined;
  }

  /** The user of a token this store verified before and that is still active, without scrypt; otherwise undefined. */
  verifiedBefore(token: string | undefined): { name: string; since: string } | undefined {
    if (!token || token.length > 200) return undefined;
    this.refresh();
    const name = this.verified.get(createHash('sha256').update(token).digest('hex'));
    const since = name === undefined ? undefined : this.activeSince(name);
    return name !== undefined && since !== undefined ? { name, since } : undefined;
  }

  /**
   * The user a token belongs to, with the date of that user's current token
   * (a later revocation or re-issue changes it), or undefined for a missing,
   * wrong or revoked token. scrypt runs on libuv's thread pool, not on the
   * event loop.
   */
  async verify(token: string | undefined): Promise<{ name: string; since: string } | undefined> {
    if (!token || token.length > 200) return undefined;
    this.refresh();
    const key = createHash('sha256').update(token).digest('hex');
    const cached = this.verified.get(key);
    if (cached !== undefined) return { name: cached, since: this.activeSince(cached)! };
    const name = UserStore.claimedName(token);
    const u = name === undefined ? undefined : this.users.find((x) => x.name === name && !x.revokedAt);
    if (!u || name === undefined) return undefined;
    const got = await new Promise<Buffer>((resolve, reject) => scrypt(token.slice(name.length + 1), u.salt, SCRYPT_KEYLEN, (err, k) => (err ? reject(err) : resolve(k))));
    if (!timingSafeEqual(got, Buffer.from(u.hash, 'hex'))) return undefined;
    this.refresh();
    if (this.activeSince(name) !== u.createdAt) return undefined; // revoked or re-issued meanwhile
    this.verified.set(key, name);
    return { name, since: u.createdAt };
  }

  /** When the active token of `name` was issued, or undefined when the user has none (revoked, unknown). */
  activeSince(name: string): string | undefined {
    this.refresh();
    return this.users.find((x) => x.name === name && !x.revokedAt)?.createdAt;
  }
}
