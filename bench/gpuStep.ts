/**
 * For a machine with an NVIDIA GPU (the server's GPU image): one training
 * step of the Qwen2.5-0.5B-shaped side network (24 tapped layers, d = 896,
 * r = 112, the full 151,936-row head, 1,024 tokens) on onnxruntime-node's
 * CUDA provider, then timed steps; prints tokens/s and the provider that ran
 * them. Fails with NO_BACKEND where the CUDA provider cannot load. Not part of
 * CI (no GPU there).
 *
 *   npm run bench:gpu [-- --steps 5 --device cuda]
 */
import { encodeHalf } from '../common/float16';
import { SeededRandom } from '../common/SeededRandom';
import { ExecutionDevice, OnnxEngine } from '../server/training/onnx/OnnxEngine';
import { OnnxHead } from '../server/training/onnx/OnnxHead';
import { OnnxTrainer } from '../server/training/onnx/OnnxTrainer';
import { initialParameters, sideShape } from '../server/training/sideNetworkSpec';

const L = 24;
const d = 896;
const TOKENS = 1024;
const VOCAB = 151_936;

async function main(): Promise<void> {
  const arg = (n: string, f: string): string => (process.argv.includes(`--${n}`) ? process.argv[process.argv.indexOf(`--${n}`) + 1]! : f);
  const steps = Number(arg('steps', '5'));
  const device = arg('device', 'cuda') as ExecutionDevice;
  const engine = await OnnxEngine.create({ device });
  const rng = new SeededRandom(3);
  const halves = encodeHalf(Float32Array.from({ length: VOCAB * d }, () => rng.normal() * 0.03));
  const shape = sideShape(d, 8, Array.from({ length: L }, (_, i) => i));
  const trainer = new OnnxTrainer(engine, shape, new OnnxHead(halves, new Float32Array(d).fill(1), 1e-6), initialParameters(shape, 1), { learningRate: 1e-3, warmupSteps: 1, totalSteps: steps + 1 });
  const batch = { rows: TOKENS, layers: Array.from({ length: L }, () => Float32Array.from({ length: TOKENS * d }, () => rng.normal())), targets: Int32Array.from({ length: TOKENS }, () => rng.int(VOCAB)), mask: new Uint8Array(TOKENS).fill(1) };
  const first = await trainer.trainBatch(batch);
  const t0 = process.hrtime.bigint();
  for (let s = 0; s < steps; s++) await trainer.trainBatch(batch);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9 / steps;
  console.log(JSON.stringify({ engine: engine.name, provider: engine.device, firstLoss: first.loss, secondsPerStep: seconds, tokensPerSecond: TOKENS / seconds }));
  await engine.dispose();
}

void main().catch((err: Error & { code?: string }) => {
  console.error(`error[${err.code ?? 'FAILED'}]: ${err.message}`);
  process.exit(1);
});
