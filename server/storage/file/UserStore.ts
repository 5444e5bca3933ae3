import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../../../common/atomicWrite';
import { ServerError } from '../../ServerError';
import { newUser, UserRecord } from '../records';
import { TokenUsers } from '../TokenUsers';

/**
 * Team members and their tokens, in `<data>/users.json`. The file is re-read
 * when it changes, so `mobillm-server users revoke` takes effect on a running
 * server at its next revocation check.
 */
export class UserStore extends TokenUsers {
  private readonly file: string;
  private loadedMtime = -1;

  constructor(dataDir: string) {
    super();
    this.file = path.join(dataDir, 'users.json');
  }

  protected refresh(): void {
    let mtime: number;
    try {
      mtime = fs.statSync(this.file).mtimeMs;
    } catch {
      if (this.loadedMtime !== -1 || this.users.length > 0) this.replace([]);
      this.loadedMtime = -1;
      return;
    }
    if (mtime === this.loadedMtime) return;
    this.replace((JSON.parse(fs.readFileSync(this.file, 'utf8')) as { users: UserRecord[] }).users);
    this.loadedMtime = mtime;
  }

  private save(): void {
    writeFileAtomic(this.file, `${JSON.stringify({ users: this.users }, null, 2)}\n`);
    this.loadedMtime = -1;
  }

  async add(name: string): Promise<string> {
    this.refresh();
    if (this.users.some((u) => u.name === name && !u.revokedAt)) throw new ServerError('EXISTS', `User ${name} exists; revoke it first to issue a new token.`);
    const { record, token } = newUser(name);
    this.users = this.users.filter((u) => u.name !== name);
    this.users.push(record);
    this.save();
    return token;
  }

  async revoke(name: string): Promise<void> {
    this.refresh();
    const u = this.users.find((x) => x.name === name && !x.revokedAt);
    if (!u) throw new ServerError('NO_SUCH_USER', `No active user ${name}.`);
    u.revokedAt = new Date().toISOString();
    this.save();
  }

  /** Every record as stored (token hashes, never tokens): what a migration copies. */
  records(): UserRecord[] {
    this.refresh();
    return this.users.map((u) => ({ ...u }));
  }
}
