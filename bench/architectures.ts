/**
 * npm run bench:architectures: every architecture the generator writes and
 * the device accepts, in the layouts people download (Q8_0, Q5_K_M, Q4_K_M,
 * made from a float32 model by llama.cpp's own quantizer), checked against
 * llama.cpp's graph (harness/architectureChecks.ts): the capture's last layer
 * through the described head against llama.cpp's logits, the device head's
 * loss on its sparse and dense paths, the standard mode (the server's loss)
 * against label-private (the device's) over 30 steps, the adapter's held-out
 * loss on the device against the job's report, and the held-out loss before
 * and after. Writes bench/results/architectures.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readGgufFile } from '../extension/core/model/gguf/GgufFile';
import { SUPPORTED_ARCHITECTURES } from '../extension/core/model/headDescription';
import { QuantizedLayout, quantizeModel } from '../extension/core/model/quantizeModel';
import { TINY_ARCHITECTURES, writeTinyModel } from '../extension/core/model/tinyModel';
import { headAgainstLlamaCpp, runMode, runsRelDiff } from '../harness/architectureChecks';
import { BENCH_CACHE, machineDescription } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

const LAYOUTS: QuantizedLayout[] = ['Q8_0', 'Q5_K_M', 'Q4_K_M'];
/** 256 wide, so every matrix row divides into K-quant blocks (llama.cpp falls back to other types otherwise). */
const SHAPE = { layers: 2, embd: 256, heads: 4, kvHeads: 2, seed: 9 };
const GGML_TYPE_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 8: 'Q8_0', 6: 'Q5_0', 12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K' };

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(BENCH_CACHE, 'architectures-'));
  const workspace = path.resolve(__dirname, '..', '..', 'common');
  const rows: unknown[] = [];
  try {
    for (const architecture of TINY_ARCHITECTURES.filter((a) => SUPPORTED_ARCHITECTURES.includes(a))) {
      const source = path.join(dir, `${architecture}-f32.gguf`);
      writeTinyModel({ ...SHAPE, architecture, out: source });
      for (const layout of LAYOUTS) {
        const model = path.join(dir, `${architecture}-${layout}.gguf`);
        await quantizeModel(source, model, layout);
        const types: Record<string, number> = {};
        for (const t of readGgufFile(model).tensors) types[GGML_TYPE_NAMES[t.type] ?? `type ${t.type}`] = (types[GGML_TYPE_NAMES[t.type] ?? `type ${t.type}`] ?? 0) + 1;
        const head = await headAgainstLlamaCpp(model, 2);
        const job = { workspace, model, seqLen: 64, batchSize: 4, steps: 30, threads: 2, learningRate: 5e-3, seed: 3, bits: 16 as const, headRank: 16 };
        const standard = await runMode({ ...job, storeDir: fs.mkdtempSync(path.join(dir, 'store-')) });
        const labelPrivate = await runMode({ ...job, storeDir: fs.mkdtempSync(path.join(dir, 'store-')), labelPrivate: true });
        const row = {
          architecture, layout, tensorTypes: types,
          captureLogitsRelDiff: head.captureLogitsRelDiff,
          headLossRelDiff: head.headLossRelDiff,
          serverVsDeviceRelDiff: runsRelDiff(standard, labelPrivate),
          adapterParityNats: { standard: standard.adapterParityNats, labelPrivate: labelPrivate.adapterParityNats },
          fineTuneHeldOut: { before: standard.result.heldOutLossBefore, after: { standard: standard.result.heldOutLossAfter, labelPrivate: labelPrivate.result.heldOutLossAfter } },
        };
        process.stdout.write(`${JSON.stringify(row)}\n`);
        rows.push(row);
        fs.rmSync(model);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const file = writeResult('architectures.json', {
    mode: 'generated random-weight models, 2 layers x 256, built-in vocabulary; both modes with the head update of rank 16, 16-bit transfer, 30 steps of 4 x 64 tokens over common/',
    machine: machineDescription(),
    bounds: { captureLogitsRelDiff: 1e-2, headLossRelDiff: 1e-3, serverVsDeviceRelDiff: 1e-3, adapterParityNats: 1e-2 },
    results: rows,
  });
  process.stdout.write(`wrote ${file}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
