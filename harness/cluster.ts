import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startServerProcess } from './serverProcess';

/** A replica of the team server: a real `mobillm-server start --database` process. */
export interface Replica {
  id: string;
  port: number;
  proc: ChildProcess;
  /** What the replica printed after it was ready (ids and numbers only). */
  output: string[];
}

/** Starts a replica on `port` sharing the database at `url`, advertised at `advertise`. */
export async function startReplica(url: string, id: string, port: number, advertise: string, options: { leaseSeconds: number; extra?: string[]; cpu?: number }): Promise<Replica> {
  const unused = fs.mkdtempSync(path.join(os.tmpdir(), 'mobillm-replica-'));
  const args = ['--database', url, '--replica-id', id, '--advertise', advertise, '--lease-seconds', String(options.leaseSeconds), '--threads', '1', ...(options.extra ?? [])];
  const { proc } = await startServerProcess(unused, port, { args, cpu: options.cpu });
  proc.once('exit', () => fs.rmSync(unused, { recursive: true, force: true }));
  const output: string[] = [];
  proc.stdout!.on('data', (d: Buffer) => output.push(...d.toString().split('\n').filter(Boolean)));
  return { id, port, proc, output };
}

export interface Health {
  ok: boolean;
  replica: string;
  jobs: number;
  store: { kind: string; where: string; reachable: boolean };
}

export async function healthOf(port: number): Promise<{ status: number; body: Health }> {
  const r = await fetch(`http://127.0.0.1:${port}/healthz`);
  return { status: r.status, body: (await r.json()) as Health };
}

/**
 * Watches a fine-tune's log and progress for a failover: the time from the
 * kill to the first step acknowledged on a connection made after it.
 */
export class FailoverClock {
  killedAt = 0;
  private reconnected = false;
  private lastStep = -1;
  firstStepAfter = 0;

  log(line: string): void {
    if (this.killedAt && /^connected \(server backend/.test(line)) this.reconnected = true;
  }

  progress(step: number): void {
    if (this.reconnected && !this.firstStepAfter && this.lastStep >= 0 && step > this.lastStep) this.firstStepAfter = Date.now();
    if (this.reconnected) this.lastStep = step;
  }

  get seconds(): number {
    return (this.firstStepAfter - this.killedAt) / 1000;
  }
}
