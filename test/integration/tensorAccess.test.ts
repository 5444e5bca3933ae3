import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ProbeReport } from '../../harness/platformProbe';
import { tinyModel } from '../helpers/models';
import { randomHeadAdapter } from '../helpers/randomAdapter';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const PROBE = path.resolve(__dirname, '..', '..', 'harness', 'platformProbe.js');

/**
 * On Apple silicon node-llama-cpp ships llama.cpp with Metal, whose tensors
 * have no usable `data` pointer on the host: the eval callback then reads and
 * writes them through ggml's backend API. MOBILLM_TENSOR_COPY=1 takes that
 * path on the CPU backend; everything must come out the same.
 */
describe('tensors read and written through ggml\'s backend API (the path of Metal and GPU buffers)', function () {
  this.timeout(300_000);

  it('captures, runs a side network 2 adapter with a head update, and trains exactly as with the host\'s pointers', async () => {
    const model = tinyModel({ layers: 3, embd: 64, heads: 4, kvHeads: 2, seed: 41 });
    const adapter = await randomHeadAdapter(model);
    const workspace = makeWorkspace(43, 4, 40);
    const run = (copy: boolean): { dir: string; report: ProbeReport } => {
      const dir = tmpDir(copy ? 'tensor-copy' : 'tensor-host');
      const r = spawnSync(process.execPath, [PROBE, dir, workspace, model, adapter, model], {
        encoding: 'utf8', env: { ...process.env, MOBILLM_TENSOR_COPY: copy ? '1' : '0', MOBILLM_HOME: path.join(dir, 'home') },
      });
      assert.equal(r.status, 0, r.stderr.slice(-2000));
      return { dir, report: JSON.parse(fs.readFileSync(path.join(dir, 'report.json'), 'utf8')) as ProbeReport };
    };
    const host = run(false);
    const copied = run(true);
    assert.ok(fs.readFileSync(path.join(host.dir, 'capture-0.f32')).equals(fs.readFileSync(path.join(copied.dir, 'capture-0.f32'))), 'the same captures');
    assert.deepEqual(copied.report.adapterLoss, host.report.adapterLoss);
    const [a, b] = [host.report.training, copied.report.training];
    assert.ok('steps' in a && 'steps' in b && a.steps > 0 && b.steps === a.steps, JSON.stringify([a, b]));
    assert.ok(Math.abs(a.heldOutLossAfter - b.heldOutLossAfter) <= 1e-6, `held-out after training ${a.heldOutLossAfter} vs ${b.heldOutLossAfter}`);
    process.stdout.write(`      adapter loss ${(host.report.adapterLoss.lossSum / host.report.adapterLoss.tokens).toFixed(6)} both ways; ${JSON.stringify(host.report.training)}\n`);
  });
});
