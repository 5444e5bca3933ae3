import * as assert from 'node:assert/strict';
import { SUPPORTED_ARCHITECTURES } from '../../extension/core/model/headDescription';
import { TINY_ARCHITECTURES } from '../../extension/core/model/tinyModel';
import { FineTuneOptions } from '../../extension/core/job/FineTuneJob';
import { headAgainstLlamaCpp, runMode, runsRelDiff } from '../../harness/architectureChecks';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { quantizedTinyModel, skipBecause, tinyModel, VOCAB_DIR } from '../helpers/models';
import { readGgufFile } from '../../extension/core/model/gguf/GgufFile';
import { makeWorkspace, tmpDir } from '../helpers/workspaces';

const MODEL = { layers: 2, embd: 64, heads: 4, kvHeads: 2, type: 'q8_0' as const, seed: 7 };

function jobOptions(model: string, workspace: string, extra: Partial<FineTuneOptions> = {}): FineTuneOptions {
  return { workspace, model, storeDir: tmpDir('arch-store'), seqLen: 32, batchSize: 4, steps: 30, threads: 1, learningRate: 5e-3, seed: 3, bits: 16, headRank: 16, ...extra };
}

describe('architectures: each graph\'s output step as llama.cpp computes it', function () {
  this.timeout(600_000);
  const accepted = TINY_ARCHITECTURES.filter((a) => SUPPORTED_ARCHITECTURES.includes(a));

  it('the generator writes every accepted architecture', () => {
    assert.deepEqual(accepted, SUPPORTED_ARCHITECTURES);
  });

  for (const arch of accepted) {
    it(`${arch}: the capture and the device's head give llama.cpp's logits; both modes train the same and lower the held-out loss; the adapter gives the reported loss on the device`, async () => {
      const model = tinyModel({ ...MODEL, architecture: arch });
      const head = await headAgainstLlamaCpp(model);
      assert.ok(head.captureLogitsRelDiff <= 1e-2, `logits from the capture differ by ${head.captureLogitsRelDiff} of the largest`);
      assert.ok(head.headLossRelDiff.sparse <= 1e-3 && head.headLossRelDiff.dense <= 1e-3, `head loss relative difference ${JSON.stringify(head.headLossRelDiff)}`);

      const ws = makeWorkspace(70);
      const standard = await runMode(jobOptions(model, ws));
      const labelPrivate = await runMode(jobOptions(model, ws, { labelPrivate: true }));
      const rel = runsRelDiff(standard, labelPrivate);
      process.stdout.write(`      ${arch}: held-out ${standard.result.heldOutLossBefore.toFixed(4)} -> ${standard.result.heldOutLossAfter.toFixed(4)} (standard), ${labelPrivate.result.heldOutLossAfter.toFixed(4)} (label-private); modes differ by ${rel.toExponential(2)}; adapter on the device ${standard.adapterParityNats.toExponential(2)} / ${labelPrivate.adapterParityNats.toExponential(2)} nats\n`);
      assert.ok(rel <= 1e-3, `the two modes differ by ${rel}`);
      for (const r of [standard, labelPrivate]) {
        assert.ok(r.result.heldOutLossAfter < r.result.heldOutLossBefore - 0.1, 'it learns');
        assert.ok(r.adapterParityNats <= 0.01, `the adapter on the device is ${r.adapterParityNats} nats from the report`);
      }
    });
  }

  it('the layouts people download, made by llama.cpp\'s quantizer (tied qwen2, 256 wide): Q4_K_M and Q5_K_M mix K-quant types; the head agrees with llama.cpp and both modes train the same', async () => {
    const shape = { layers: 2, embd: 256, heads: 4, kvHeads: 2, seed: 8, architecture: 'qwen2' as const, untiedHead: false };
    for (const [layout, types] of [['Q4_K_M', [12, 14]], ['Q5_K_M', [13, 14]]] as const) {
      const model = await quantizedTinyModel(shape, layout);
      const found = new Set(readGgufFile(model).tensors.map((t) => t.type));
      for (const t of types) assert.ok(found.has(t), `${layout} has ggml type ${t} (types found: ${[...found].join(', ')})`);
      const head = await headAgainstLlamaCpp(model);
      assert.ok(head.captureLogitsRelDiff <= 1e-2 && head.headLossRelDiff.sparse <= 1e-3 && head.headLossRelDiff.dense <= 1e-3, `${layout}: ${JSON.stringify(head)}`);
    }
    const model = await quantizedTinyModel(shape, 'Q4_K_M');
    const ws = makeWorkspace(72);
    const standard = await runMode(jobOptions(model, ws, { steps: 12 }));
    const labelPrivate = await runMode(jobOptions(model, ws, { steps: 12, labelPrivate: true }));
    assert.ok(runsRelDiff(standard, labelPrivate) <= 1e-3, `Q4_K_M: the two modes differ by ${runsRelDiff(standard, labelPrivate)}`);
    assert.ok(labelPrivate.adapterParityNats <= 0.01, `Q4_K_M: the adapter on the device is ${labelPrivate.adapterParityNats} nats from the report`);
  });

  for (const [arch, vocab] of [['llama', 'deepseek-coder'], ['qwen2', 'qwen2'], ['phi3', 'phi-3'], ['starcoder2', 'starcoder']] as const) {
    it(`${arch} with a real model's vocabulary (llama.cpp's ggml-vocab-${vocab}.gguf): the head agrees with llama.cpp and a label-private job learns`, async function () {
      const file = path.join(VOCAB_DIR, `ggml-vocab-${vocab}.gguf`);
      if (!fs.existsSync(file)) skipBecause(this, `${file} is absent (the addon build clones llama.cpp there)`);
      const model = tinyModel({ ...MODEL, architecture: arch, vocab: file, untiedHead: arch !== 'qwen2' });
      const head = await headAgainstLlamaCpp(model);
      assert.ok(head.headLossRelDiff.sparse <= 1e-3 && head.headLossRelDiff.dense <= 1e-3, `${arch}: ${JSON.stringify(head)}`);
      const r = await runMode(jobOptions(model, makeWorkspace(73), { steps: 12, labelPrivate: true }));
      assert.ok(r.result.heldOutLossAfter < r.result.heldOutLossBefore - 0.1, `${arch}: held-out ${r.result.heldOutLossBefore} -> ${r.result.heldOutLossAfter}`);
      assert.ok(r.adapterParityNats <= 0.01, `${arch}: the adapter on the device is ${r.adapterParityNats} nats from the report`);
    });
  }

  it('granite (logits divided by logit_scale): an adapter joined after the final norm gives on the device the loss it was trained to', async () => {
    const model = tinyModel({ ...MODEL, architecture: 'granite' });
    const r = await runMode(jobOptions(model, makeWorkspace(71), { joinAfterNorm: true }));
    assert.ok(r.result.heldOutLossAfter < r.result.heldOutLossBefore - 0.1, 'it learns');
    assert.ok(r.adapterParityNats <= 0.01, `the adapter on the device is ${r.adapterParityNats} nats from the report`);
  });

  it('gemma2 (logits soft-capped): ignoring the cap would be wrong by more than the bounds hold', async () => {
    const head = await headAgainstLlamaCpp(tinyModel({ ...MODEL, architecture: 'gemma2' }));
    assert.ok(head.withoutDescription !== undefined && head.withoutDescription > 1e-2, `without the cap the loss differs by ${head.withoutDescription}`);
  });
});
