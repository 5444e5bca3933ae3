/**
 * The device/server pipeline, in one run, with the embedded server on this
 * machine and the built-in tiny model, on this repository's own source tree:
 *  - time split (device forward, quantize, send, server step, idle) and the
 *    pipelining efficiency wall / max(device busy, server busy);
 *  - bytes on the wire per training token vs the f32 size;
 *  - final held-out loss for 16, 8 and 4 bits from the same seed;
 *  - the same pipeline on a Qwen2.5-0.5B-shaped model (real Qwen2 vocabulary,
 *    random weights, Q8_0): device forward, server step and wall time, and
 *    wall / device forward (the server must not be the busier side).
 *
 *   npm run bench:pipeline [-- --steps 120 --qwen-steps 8]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ensureDefaultModel } from '../extension/core/model/defaultModel';
import { FineTuneJob, FineTuneResult } from '../extension/core/job/FineTuneJob';
import { BENCH_CACHE, machineDescription, qwenShapedModel } from './lib/benchModels';
import { writeResult } from './lib/writeResult';

async function run(bits: 4 | 8 | 16, steps: number, model: string, maxHeldOutSequences?: number): Promise<FineTuneResult> {
  const store = fs.mkdtempSync(path.join(BENCH_CACHE, 'pipeline-'));
  try {
    return await new FineTuneJob({ workspace: path.resolve(__dirname, '..', '..'), model, storeDir: store, steps, bits, seed: 1, maxHeldOutSequences }).run();
  } finally {
    fs.rmSync(store, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const steps = Number(arg('steps', '120'));
  const qwenSteps = Number(arg('qwen-steps', '8'));
  fs.mkdirSync(BENCH_CACHE, { recursive: true });
  const model = ensureDefaultModel(BENCH_CACHE);
  const results: Record<string, FineTuneResult> = {};
  for (const bits of [8, 16, 4] as const) {
    results[bits] = await run(bits, steps, model);
    process.stderr.write(`bits ${bits}: held-out ${results[bits]!.heldOutLossBefore.toFixed(4)} -> ${results[bits]!.heldOutLossAfter.toFixed(4)}\n`);
  }
  const qwen = await run(8, qwenSteps, qwenShapedModel('q8_0'), 4);
  const q = qwen.timings;
  process.stderr.write(`qwen-shaped: device forward ${q.deviceForwardSeconds.toFixed(1)} s, server ${q.serverSeconds.toFixed(1)} s, wall ${q.trainWallSeconds.toFixed(1)} s\n`);
  const r8 = results[8]!;
  const t = r8.timings;
  const deviceBusy = t.deviceForwardSeconds + t.quantizeSeconds + t.sendSeconds;
  const efficiency = t.trainWallSeconds / Math.max(deviceBusy, t.serverSeconds);
  const layers = r8.config.tappedLayers.length;
  const d = 128;
  const f32PerToken = layers * d * 4 + 5;
  const trainBytesPerToken = (bits: 4 | 8 | 16): number => {
    const perLayer = bits === 16 ? 2 * d : bits === 8 ? d + 4 : d / 2 + 2 * Math.ceil(d / 32);
    return layers * perLayer + 5;
  };
  const out = {
    workspace: 'this repository', steps, tokens: r8.trainTokens, model: path.basename(model),
    timeSplitSeconds: { deviceForward: t.deviceForwardSeconds, quantize: t.quantizeSeconds, send: t.sendSeconds, serverStep: t.serverSeconds, wall: t.trainWallSeconds, idle: Math.max(0, t.trainWallSeconds - Math.max(deviceBusy, t.serverSeconds)) },
    pipeliningEfficiency: efficiency,
    wire: { trainPayloadBytesPerToken: Object.fromEntries(([16, 8, 4] as const).map((b) => [b, trainBytesPerToken(b)])), f32BytesPerToken: f32PerToken, measuredBytesPerTokenIncludingHeadAndEval: r8.bytesPerToken },
    heldOutLoss: Object.fromEntries(Object.entries(results).map(([b, r]) => [b, { before: r.heldOutLossBefore, after: r.heldOutLossAfter }])),
    int4RelativeLossCost: (results[4]!.heldOutLossAfter - results[16]!.heldOutLossAfter) / results[16]!.heldOutLossAfter,
    qwenShaped: {
      model: 'qwen2.5-0.5b-shape-q8_0.gguf (24 layers, d 896, real Qwen2 vocabulary 151,936, random weights)',
      steps: qwenSteps, tokens: qwen.trainTokens, engine: 'embedded server, onnxruntime-cpu',
      timeSplitSeconds: { deviceForward: q.deviceForwardSeconds, quantize: q.quantizeSeconds, send: q.sendSeconds, serverStep: q.serverSeconds, wall: q.trainWallSeconds },
      wallOverDeviceForward: q.trainWallSeconds / q.deviceForwardSeconds,
      serverOverDeviceForward: q.serverSeconds / q.deviceForwardSeconds,
      goalWallOverDeviceForward: 1.15,
    },
    int8RelativeLossCost: (results[8]!.heldOutLossAfter - results[16]!.heldOutLossAfter) / results[16]!.heldOutLossAfter,
    machine: machineDescription(),
  };
  writeResult('pipeline.json', out);
  const s = out.timeSplitSeconds;
  console.log(`time split (s): device forward ${s.deviceForward.toFixed(2)}, quantize ${s.quantize.toFixed(2)}, send ${s.send.toFixed(3)}, server step ${s.serverStep.toFixed(2)}, wall ${s.wall.toFixed(2)}, idle ${s.idle.toFixed(2)}`);
  console.log(`pipelining efficiency wall / max(device, server) = ${efficiency.toFixed(3)}`);
  console.log(`train payload bytes/token: 16-bit ${trainBytesPerToken(16)}, 8-bit ${trainBytesPerToken(8)}, 4-bit ${trainBytesPerToken(4)} vs f32 ${f32PerToken}`);
  for (const [b, r] of Object.entries(out.heldOutLoss)) console.log(`bits ${b}: held-out loss ${r.before.toFixed(4)} -> ${r.after.toFixed(4)}`);
  const qs = out.qwenShaped;
  console.log(`qwen-shaped (${qwenSteps} steps, ${qs.tokens} tokens): device forward ${qs.timeSplitSeconds.deviceForward.toFixed(1)} s, server step ${qs.timeSplitSeconds.serverStep.toFixed(1)} s, wall ${qs.timeSplitSeconds.wall.toFixed(1)} s; wall / device forward ${qs.wallOverDeviceForward.toFixed(3)} (goal <= 1.15), server / device ${qs.serverOverDeviceForward.toFixed(3)}`);
  console.log(`int4 relative loss cost vs f16: ${(100 * out.int4RelativeLossCost).toFixed(2)}%, int8: ${(100 * out.int8RelativeLossCost).toFixed(2)}%`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
