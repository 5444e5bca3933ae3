import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { FineTuneJob, FineTuneOptions } from '../../extension/core/job/FineTuneJob';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL_OPTS = { layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 2 };

function options(workspace: string, extra: Partial<FineTuneOptions> = {}): FineTuneOptions {
  return { workspace, model: tinyModel(MODEL_OPTS), storeDir: tmpDir('store'), seqLen: 32, batchSize: 4, steps: 40, checkpointEvery: 5, threads: 1, learningRate: 5e-3, ...extra };
}

/** This process's children running the embedded server, as the operating system lists them. */
function embeddedChildren(): number[] {
  const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes('embedded.js')).map((l) => Number(l.trim().split(/\s+/)[0]));
}

describe('the embedded server: a child process of the device', function () {
  this.timeout(300_000);

  it('trains outside this process: the server\'s code is never loaded here, and the process is gone after the job', async () => {
    const seen: number[][] = [];
    const r = await new FineTuneJob(options(makeWorkspace(11), { steps: 12, onProgress: (p) => void (p.phase === 'training' && seen.length < 3 && seen.push(embeddedChildren())) })).run();
    assert.equal(r.steps, 12);
    assert.ok(seen.some((pids) => pids.length === 1), `one child ran the server: ${JSON.stringify(seen)}`);
    const serverCode = Object.keys(require.cache).filter((f) => /(MobiServer|TrainerPool|OnnxTrainer)\.js$/.test(path.basename(f)));
    assert.deepEqual(serverCode, [], 'no server or training code in this process');
    assert.deepEqual(embeddedChildren(), [], 'stopped with the job');
  });

  it('a server process killed mid-job is started again and the job finishes from its last checkpoint, with all its steps', async () => {
    let killed: number | undefined;
    const logs: string[] = [];
    const r = await new FineTuneJob(
      options(makeWorkspace(12), {
        log: (l) => logs.push(l),
        onProgress: (p) => {
          if (killed === undefined && p.phase === 'training' && p.step >= 12) {
            killed = embeddedChildren()[0];
            if (killed !== undefined) process.kill(killed, 'SIGKILL');
          }
        },
      }),
    ).run();
    assert.ok(killed !== undefined, 'the server process was killed');
    assert.equal(r.steps, 40);
    assert.ok(logs.some((l) => /local training server stopped; starting it again/.test(l)), 'the restart is logged');
    assert.ok(r.heldOutLossAfter < r.heldOutLossBefore);
  });
});
