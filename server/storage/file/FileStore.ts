import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import { LOCAL_LEASES } from '../LocalLeases';
import type { Replicas, ServerStore } from '../Store';
import { HeadStore } from './HeadStore';
import { JobStore } from './JobStore';
import { UserStore } from './UserStore';

/**
 * The file store: one data folder that one server owns (the default, and the
 * embedded server's). One process trains every job, so a lease is always
 * this process's and devices are counted in memory.
 */
export class FileStore implements ServerStore {
  readonly kind = 'file';
  readonly users: UserStore;
  readonly jobs: JobStore;
  readonly heads: HeadStore;
  readonly leases = LOCAL_LEASES;
  readonly replicas: Replicas;

  constructor(readonly where: string) {
    this.users = new UserStore(where);
    this.jobs = new JobStore(where);
    this.heads = new HeadStore(where);
    const devices = new Map<string, string>();
    this.replicas = {
      id: randomUUID(),
      beat: async () => undefined,
      openDevice: async (session, user, max) => {
        if ([...devices.values()].filter((u) => u === user).length >= max) return false;
        devices.set(session, user);
        return true;
      },
      closeDevice: async (session) => void devices.delete(session),
      // users.json is re-read when it changes; the server's revocation check polls it.
      onUsersChanged: () => undefined,
    };
  }

  async reachable(): Promise<boolean> {
    try {
      await fs.promises.mkdir(this.where, { recursive: true, mode: 0o700 });
      await fs.promises.access(this.where, fs.constants.W_OK);
      return true;
    } catch {
      return false;
    }
  }

  /** Not measured: the file store's writes are the process's own. */
  busySeconds(): number {
    return 0;
  }

  async close(): Promise<void> {}
}
