import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { FineTuneJob, FineTuneOptions } from '../../extension/core/job/FineTuneJob';
import { DEVICE_CLI } from '../../harness/serverProcess';
import { tinyModel } from '../helpers/models';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL_OPTS = { layers: 3, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 2 };

function options(workspace: string, extra: Partial<FineTuneOptions> = {}): FineTuneOptions {
  return { workspace, model: tinyModel(MODEL_OPTS), storeDir: tmpDir('store'), seqLen: 32, batchSize: 4, steps: 40, checkpointEvery: 5, threads: 1, learningRate: 5e-3, ...extra };
}

/** This process's children running the embedded server, as the operating system lists them. */
function embeddedChildren(): number[] {
  const out = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' }).stdout; // ps exits 1 when none match
  return out.split('\n').filter((l) => l.includes('embedded.js')).map((l) => Number(l.trim().split(/\s+/)[0]));
}

describe('the embedded server: a child process of the device', function () {
  this.timeout(300_000);

  it('trains outside the device\'s process: ONNX Runtime is never loaded there, only in its child, which is gone after the job', async () => {
    const home = tmpDir('embedded-home');
    const device = spawn(process.execPath, [DEVICE_CLI, 'finetune', '--workspace', makeWorkspace(11), '--model', tinyModel(MODEL_OPTS), '--steps', '12', '--seq-len', '32', '--json'], { env: { ...process.env, MOBILLM_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    device.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => device.once('exit', resolve));
    const seen: { child: boolean; deviceHasOrt: boolean; childHasOrt: boolean }[] = [];
    while (device.exitCode === null) {
      const children = spawnSync('ps', ['-o', 'pid=,args=', '--ppid', String(device.pid)], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.includes('embedded.js'));
      const maps = (pid: number): string => { try { return fs.readFileSync(`/proc/${pid}/maps`, 'utf8'); } catch { return ''; } };
      if (children.length > 0) {
        const child = Number(children[0]!.trim().split(/\s+/)[0]);
        seen.push({ child: true, deviceHasOrt: /onnxruntime/.test(maps(device.pid!)), childHasOrt: /onnxruntime/.test(maps(child)) });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(await exited, 0);
    assert.equal((JSON.parse(out.trim().split('\n').pop()!) as { steps: number }).steps, 12);
    assert.ok(seen.some((s) => s.childHasOrt), `the child trained with ONNX Runtime: ${JSON.stringify(seen.slice(0, 3))}`);
    assert.ok(seen.every((s) => !s.deviceHasOrt), 'the device\'s process never loaded ONNX Runtime');
    const left = spawnSync('ps', ['-eo', 'args='], { encoding: 'utf8' }).stdout.split('\n').filter((l) => l.includes('embedded.js') && l.includes(home));
    assert.deepEqual(left, [], 'the embedded server stopped with the job');
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
