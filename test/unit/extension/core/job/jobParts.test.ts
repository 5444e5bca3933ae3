import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ServerMessage } from '../../../../../common/messages';
import { MobiError } from '../../../../../extension/core/MobiError';
import { CreditSource, CreditWindow } from '../../../../../extension/core/job/CreditWindow';
import { checkFineTuneOptions, resolveFineTuneOptions } from '../../../../../extension/core/job/FineTuneOptions';
import { JOB_DEFAULTS } from '../../../../../common/jobSettings';
import { tappedLayers } from '../../../../../extension/core/job/FineTuneJob';
import type { JobContext } from '../../../../../extension/core/job/JobContext';
import { JobPhase, JobProgress, ProgressTracker } from '../../../../../extension/core/job/JobProgress';
import { JobRecordStore } from '../../../../../extension/core/job/JobRecordStore';
import { followable, ReconnectPolicy } from '../../../../../extension/core/job/ReconnectPolicy';
import { errorFromServer } from '../../../../../extension/core/connection/errorFromServer';
import { expectCode } from '../../../../helpers/expectCode';
import { tmpDir } from '../../../../helpers/workspaces';

/** A connection's message and loss events, driven by the test. */
class Events implements CreditSource {
  isOpen = true;
  private readonly messages = new Set<(m: ServerMessage, p: Buffer) => void>();
  private readonly losses = new Set<(err: MobiError) => void>();
  subscribe(l: (m: ServerMessage, p: Buffer) => void): () => void {
    this.messages.add(l);
    return () => this.messages.delete(l);
  }
  onLost(l: (err: MobiError) => void): () => void {
    this.losses.add(l);
    return () => this.losses.delete(l);
  }
  deliver(m: ServerMessage): void {
    for (const l of this.messages) l(m, Buffer.alloc(0));
  }
  lose(): void {
    this.isOpen = false;
    for (const l of this.losses) l(new MobiError('CONNECTION_LOST', 'lost'));
  }
  get listeners(): number {
    return this.messages.size + this.losses.size;
  }
}

const ack = (jobId: string, index: number): ServerMessage<'batch/ack'> => ({ type: 'batch/ack', jobId, index, step: index + 1, loss: 1, learningRate: 1e-3, tokens: 8, seconds: 0.01 });
const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
};

function context(log: string[] = [], signal?: AbortSignal): JobContext & { phases: JobPhase[] } {
  const phases: JobPhase[] = [];
  return {
    phases,
    log: (l) => log.push(l),
    setPhase: (p) => phases.push(p),
    checkCancelled: () => {
      if (signal?.aborted) throw new MobiError('CANCELLED', 'cancelled');
    },
    signal,
  };
}

describe('device job parts', () => {
  describe('CreditWindow', () => {
    it('holds at most `credits` batches and frees one per acknowledgement of its own job', async () => {
      const ev = new Events();
      const acked: number[] = [];
      const w = new CreditWindow(ev, 'job-a', 2, (a) => acked.push(a.index));
      await w.acquire();
      w.sent(0);
      await w.acquire();
      w.sent(1);
      const third = w.acquire();
      assert.equal(await settled(third), false, 'a third batch must wait for a credit');
      ev.deliver(ack('job-b', 0)); // another job's ack frees nothing
      assert.equal(await settled(third), false);
      ev.deliver(ack('job-a', 0));
      assert.equal(await settled(third), true);
      assert.deepEqual(acked, [0]);
      w.sent(2);
      const drained = w.drain();
      ev.deliver(ack('job-a', 1));
      assert.equal(await settled(drained), false);
      ev.deliver(ack('job-a', 2));
      await drained;
      assert.equal(w.size, 0);
      w.dispose();
      assert.equal(ev.listeners, 0, 'dispose unsubscribes');
    });

    it("fails a waiter with the server's error through the one mapping, and with the connection's loss", async () => {
      const ev = new Events();
      const w = new CreditWindow(ev, 'job-a', 1, () => undefined);
      w.sent(0);
      const waiting = w.acquire();
      ev.deliver({ type: 'error', code: 'NO_SUCH_JOB', message: 'x', fatal: false, jobId: 'job-a' });
      await expectCode(waiting, 'NO_SUCH_JOB');
      w.dispose();

      const ev2 = new Events();
      const w2 = new CreditWindow(ev2, 'job-a', 1, () => undefined);
      w2.sent(0);
      const draining = w2.drain();
      ev2.lose();
      await expectCode(draining, 'CONNECTION_LOST');
      w2.dispose();
      await expectCode(new CreditWindow(ev2, 'job-a', 1, () => undefined).acquire(), 'CONNECTION_LOST');
    });
  });

  describe('ProgressTracker', () => {
    it('reports phase, counters and an ETA from the pace since training (re)started', () => {
      let now = 1_000_000;
      const seen: JobProgress[] = [];
      const t = new ProgressTracker({ bytesSent: () => 4096, deviceForwardSeconds: () => 2, deviceForwardTokens: () => 100 }, (p) => seen.push(p), () => now);
      t.setTotalSteps(10);
      t.setStep(4); // a resumed job: 4 steps done before this session
      t.setPhase('training');
      t.startTraining();
      t.batchSent(4, 100);
      now += 3000;
      t.stepAcknowledged(5, 2.5);
      const last = seen[seen.length - 1]!;
      assert.equal(last.phase, 'training');
      assert.equal(last.step, 5);
      assert.equal(last.trainLoss, 2.5);
      assert.equal(last.bytesSent, 4096);
      assert.equal(last.deviceTokensPerSecond, 50);
      assert.equal(last.etaSeconds, 15, '1 step in 3 s, 5 steps to go');
      assert.deepEqual(last.lossHistory, [[5, 2.5]]);
      assert.notEqual(seen[0], seen[1], 'each report is a copy');
    });
  });

  describe('resolveFineTuneOptions', () => {
    it('fills every default, keeps what is given, and refuses a width that does not exist', async () => {
      const o = resolveFineTuneOptions({ workspace: 'w', model: 'm', seqLen: 64, epochs: undefined });
      assert.equal(o.seqLen, 64);
      assert.equal(o.epochs, JOB_DEFAULTS.epochs);
      assert.equal(o.bits, 8);
      assert.deepEqual(o.scan, {});
      assert.ok(o.storeDir.length > 0);
      await expectCode(() => resolveFineTuneOptions({ workspace: 'w', model: 'm', bits: 3 as never }), 'BAD_ARGUMENT');
    });

    it('trains label-private by default with a team server, in the standard mode with the embedded one, and as told when told', async () => {
      const server = { url: 'ws://127.0.0.1:1', token: 't' };
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server }).labelPrivate, true);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm' }).labelPrivate, false);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server, labelPrivate: false }).labelPrivate, false);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', labelPrivate: true }).labelPrivate, true);
      // Joining after the norm is the standard mode's: with a team server it needs label-private turned off, and says so.
      await expectCode(() => resolveFineTuneOptions({ workspace: 'w', model: 'm', server, joinAfterNorm: true }), 'BAD_ARGUMENT');
      assert.throws(() => resolveFineTuneOptions({ workspace: 'w', model: 'm', server, joinAfterNorm: true }), /turn labelPrivate off/);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server, joinAfterNorm: true, labelPrivate: false }).joinAfterNorm, true);
    });

    it('trains the head update by default in both modes (label-private trains it on this computer); --head-rank 0 turns it off', async () => {
      const server = { url: 'ws://127.0.0.1:1', token: 't' };
      assert.ok(JOB_DEFAULTS.headRank > 0);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm' }).headRank, JOB_DEFAULTS.headRank);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server }).headRank, JOB_DEFAULTS.headRank);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server, labelPrivate: false }).headRank, JOB_DEFAULTS.headRank);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', labelPrivate: true }).headRank, JOB_DEFAULTS.headRank);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server, headRank: 4 }).headRank, 4);
      assert.equal(resolveFineTuneOptions({ workspace: 'w', model: 'm', server, headRank: 0 }).headRank, 0);
    });
  });

  describe('JobRecordStore', () => {
    it('keeps a record for resuming, finds the latest, and says NO_SUCH_JOB for an unknown or malformed id', async () => {
      const dir = tmpDir('records');
      const store = new JobRecordStore(dir);
      const older = '11111111-1111-1111-1111-111111111111';
      const newer = '22222222-2222-2222-2222-222222222222';
      store.save({ jobId: older, workspace: '/w', fingerprint: 'f'.repeat(64), heldOutLossBefore: 3.5 });
      await new Promise((r) => setTimeout(r, 5));
      store.save({ jobId: newer, workspace: '/v', fingerprint: 'e'.repeat(64) });
      assert.equal(store.load(older).heldOutLossBefore, 3.5);
      assert.ok(fs.existsSync(path.join(dir, 'jobs', `${older}.json`)));
      assert.equal(store.load('last').jobId, newer);
      assert.deepEqual(store.list().map((r) => r.jobId), [newer, older]);
      await expectCode(() => store.load('33333333-3333-3333-3333-333333333333'), 'NO_SUCH_JOB');
      await expectCode(() => store.load('../../etc/passwd'), 'NO_SUCH_JOB');
      await expectCode(() => new JobRecordStore(tmpDir('empty')).load('last'), 'NO_SUCH_JOB');
    });
  });

  describe('ReconnectPolicy', () => {
    it('retries a lost connection with backoff and gives up after the outage limit', async () => {
      const log: string[] = [];
      const ctx = context(log);
      let now = 0;
      let attempts = 0;
      const retry = new ReconnectPolicy(ctx, 600, () => true, () => now);
      await retry.run(async () => {
        attempts++;
        now += 100;
        if (attempts < 3) throw new MobiError('CONNECTION_LOST', 'lost');
      });
      assert.equal(attempts, 3);
      assert.deepEqual(ctx.phases, ['connecting', 'connecting']);
      assert.match(log[0]!, /reconnecting in 250 ms/);
      assert.match(log[1]!, /reconnecting in 500 ms/);

      attempts = 0;
      const fresh = new ReconnectPolicy(ctx, 600, () => true, () => now);
      await expectCode(fresh.run(async () => {
        attempts++;
        now += 1000;
        throw new MobiError('SERVER_UNREACHABLE', 'down');
      }), 'CONNECTION_LOST');
      assert.equal(attempts, 2, 'the second failure is past the 600 ms outage limit');
    });

    it('does not retry a server never reached, other errors, or a cancelled job', async () => {
      const never = new ReconnectPolicy(context(), 60_000, () => false);
      await expectCode(never.run(async () => {
        throw new MobiError('SERVER_UNREACHABLE', 'wrong url');
      }), 'SERVER_UNREACHABLE');
      const policy = new ReconnectPolicy(context(), 60_000, () => true);
      await expectCode(policy.run(async () => {
        throw new MobiError('UNAUTHORIZED', 'token');
      }), 'UNAUTHORIZED');
      const abort = new AbortController();
      abort.abort();
      const cancelled = new ReconnectPolicy(context([], abort.signal), 60_000, () => true);
      await expectCode(cancelled.run(async () => {
        throw new MobiError('CONNECTION_LOST', 'lost');
      }), 'CONNECTION_LOST');
    });

    it('follows a job moved to another replica at once, and waits out a database that is away; the error reaches beforeRetry', async () => {
      const log: string[] = [];
      const ctx = context(log);
      let attempts = 0;
      const seen: string[] = [];
      await new ReconnectPolicy(ctx, 60_000, () => true).run(
        async () => {
          attempts++;
          if (attempts === 1) throw errorFromServer({ type: 'error', code: 'JOB_ELSEWHERE', message: 'x', fatal: false, location: 'ws://lb:8080/r/1' });
          if (attempts === 2) throw errorFromServer({ type: 'error', code: 'STORE_UNAVAILABLE', message: 'x', fatal: false });
        },
        (err) => seen.push(`${err.code} ${err.location ?? ''}`.trim()),
      );
      assert.equal(attempts, 3);
      assert.deepEqual(seen, ['JOB_MOVED ws://lb:8080/r/1', 'STORE_UNAVAILABLE']);
      assert.match(log[0]!, /\(JOB_MOVED\); reconnecting in 0 ms/);
      assert.match(log[1]!, /\(STORE_UNAVAILABLE\); reconnecting in 250 ms/);
    });

    it('follows a replica\'s address only on the configured host, never from wss to ws', () => {
      assert.equal(followable('ws://lb.example:8080', 'ws://lb.example:8080/r/1'), 'ws://lb.example:8080/r/1');
      assert.equal(followable('wss://lb.example', 'wss://lb.example:9443/r/0'), 'wss://lb.example:9443/r/0');
      assert.equal(followable('ws://lb.example:8080', 'ws://evil.example:8080/r/1'), undefined, 'another host would receive the token');
      assert.equal(followable('wss://lb.example', 'ws://lb.example/r/0'), undefined, 'no downgrade to plain text');
      assert.equal(followable('ws://lb.example', 'http://lb.example/r/0'), undefined);
      assert.equal(followable('ws://lb.example', 'not a url'), undefined);
      assert.equal(followable(undefined, 'ws://lb.example/r/0'), undefined, 'the embedded server is never redirected');
    });

    it('starts a new outage after a successful connection', async () => {
      let now = 0;
      let attempts = 0;
      const policy = new ReconnectPolicy(context(), 1500, () => true, () => now);
      await policy.run(async () => {
        attempts++;
        now += 1000;
        if (attempts > 1) policy.connected();
        if (attempts < 4) throw new MobiError('CONNECTION_LOST', 'lost');
      });
      assert.equal(attempts, 4, 'each drop after a connection starts its own 1.5 s allowance');
    });
  });
});

describe('which layers a job taps', () => {
  it('every layer from skip on, or every n-th counting down from the last (always tapped)', () => {
    assert.deepEqual(tappedLayers(4, 0, 1), [0, 1, 2, 3]);
    assert.deepEqual(tappedLayers(4, 0, 2), [1, 3]);
    assert.deepEqual(tappedLayers(6, 1, 2), [1, 3, 5]);
    assert.deepEqual(tappedLayers(6, 2, 3), [2, 5]);
    assert.deepEqual(tappedLayers(3, 0, 5), [2]);
  });

  it('refuses a side network other than 1 or 2, a tap interval below 1, and a join after the norm in label-private mode, as BAD_ARGUMENT', () => {
    for (const bad of [{ sideNetwork: 3 }, { tapEvery: 0 }, { tapEvery: 1.5 }, { joinAfterNorm: 'yes' }, { joinAfterNorm: true, labelPrivate: true }, { initFromBackbone: 1 }, { headRank: 17 }]) {
      assert.throws(() => checkFineTuneOptions({ workspace: '.', model: '', ...(bad as object) }), (e: MobiError) => e.code === 'BAD_ARGUMENT', JSON.stringify(bad));
    }
  });
});
