import { createHash, scrypt, timingSafeEqual } from 'node:crypto';
import { SCRYPT_KEYLEN, UserRecord, UserSummary } from './records';
import type { Users } from './Store';

/**
 * Token checks over a snapshot of the users, whatever keeps them: the file
 * store re-reads `users.json` when it changes, PostgreSQL's store reloads on
 * a notification from any replica. Tokens verified once are remembered (as
 * sha256) so that a reconnect costs no scrypt; a revocation or re-issue ends
 * that at once (activeSince changes).
 */
export abstract class TokenUsers implements Users {
  protected users: UserRecord[] = [];
  /** sha256(token) -> name, for tokens already verified (scrypt is slow on purpose). */
  private readonly verified = new Map<string, string>();

  /** Brings the snapshot up to date without waiting (the file store re-reads a changed file). */
  protected abstract refresh(): void;
  /** Brings the snapshot up to date, waiting for the store when it must (a token issued a moment ago on another replica). */
  protected async refreshNow(): Promise<void> {
    this.refresh();
  }
  /** Replaces the snapshot (remembered tokens are checked again). */
  protected replace(users: UserRecord[]): void {
    this.users = users;
    this.verified.clear();
  }

  abstract add(name: string): Promise<string>;
  abstract revoke(name: string): Promise<void>;

  async list(): Promise<UserSummary[]> {
    await this.refreshNow();
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
    const name = TokenUsers.claimedName(token);
    if (name === undefined) return undefined;
    if (this.activeSince(name) === undefined) await this.refreshNow();
    const u = this.users.find((x) => x.name === name && !x.revokedAt);
    if (!u) return undefined;
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
