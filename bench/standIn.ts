/**
 * A pretrained stand-in for a real code model (issue 12): 6 layers, d = 384,
 * llama.cpp's 32k llama SPM vocabulary, pretrained by llama-finetune on about
 * 1 MB of third-party TypeScript read from node_modules at run time (half
 * @types declarations, half the .ts sources packages ship), once, cached
 * under bench/.cache/peers. The 4 x 256 backbone of the convergence benchmark
 * stays the quick variant.
 *
 *   npm run bench:stand-in      (pretrains if needed, reports its held-out loss)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { writeTinyModel } from '../extension/core/model/tinyModel';
import { buildPeer, corpus, heldOutLoss, measure, PEERS, ROOT } from './peerHarness';

export const STAND_IN = { layers: 6, embd: 384, heads: 6, kvHeads: 6, ff: 1024 };
const VOCAB = path.join(ROOT, 'build', 'llama.cpp', 'models', 'ggml-vocab-llama-spm.gguf');
const PRETRAIN_BYTES = 1_000_000;
const PRETRAIN_EPOCHS = 1;
/**
 * llama-finetune's Adam has no clipping, warm-up or per-tensor rates: at 2e-4
 * and above the training loss climbed back above uniform within a few hundred
 * steps, in 128- and in 512-token windows (docs/benchmarks.md), so the rate is low.
 */
const PRETRAIN_LR = 5e-5;
/**
 * Tokens per pretraining window. llama-finetune takes one optimizer step per
 * window (it caps its batch at the context), so 512-token windows are 4x the
 * batch of the fine-tuning benchmarks' 128.
 */
const PRETRAIN_CONTEXT = 512;

/** Every file under `dir` (nested node_modules included) whose name passes `keep`, in sorted order. */
function filesUnder(dir: string, keep: (name: string) => boolean): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && keep(e.name)) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/**
 * About 1 MB of third-party TypeScript from node_modules, in a fixed order:
 * half declarations (@types/*), half implementation source (the .ts files
 * that packages ship), file by file in turn, so neither kind comes last
 * (llama-finetune does not shuffle, and its validation split is the end).
 */
export function pretrainText(): string {
  const file = path.join(PEERS, `standin-pretrain-mixed-${PRETRAIN_BYTES}.txt`);
  if (!fs.existsSync(file)) {
    const declarations = filesUnder(path.join(ROOT, 'node_modules', '@types'), (n) => n.endsWith('.d.ts'));
    const isSource = (n: string): boolean => n.endsWith('.ts') && !/\.d\.[cm]?ts$/.test(n);
    const sources = filesUnder(path.join(ROOT, 'node_modules'), isSource).filter((f) => !f.includes(`${path.sep}@types${path.sep}`));
    const half = PRETRAIN_BYTES / 2;
    const taken = [0, 0];
    const parts: string[] = [];
    for (let i = 0; i < Math.max(declarations.length, sources.length) && (taken[0]! < half || taken[1]! < half); i++) {
      [declarations[i], sources[i]].forEach((f, kind) => {
        if (f === undefined || taken[kind]! >= half) return;
        const text = `${fs.readFileSync(f, 'utf8').slice(0, half - taken[kind]!)}\n`;
        taken[kind]! += text.length;
        parts.push(text);
      });
    }
    if (taken[0]! < half || taken[1]! < half) throw new RangeError(`only ${taken[0]} bytes of declarations and ${taken[1]} of TypeScript source found in node_modules`);
    fs.mkdirSync(PEERS, { recursive: true });
    fs.writeFileSync(file, parts.join(''));
  }
  return file;
}

/** The pretrained stand-in (pretrained once, then cached); seconds is null when the cached one was used. */
export async function standInBackbone(bin: string, log: (line: string) => void): Promise<{ pretrained: string; base: string; seconds: number | null }> {
  const s = STAND_IN;
  const name = `standin-${s.layers}x${s.embd}-spm32k`;
  const base = path.join(PEERS, `${name}-f32.gguf`);
  const pretrained = path.join(PEERS, `${name}-pretrained-mixed-${PRETRAIN_BYTES}-${PRETRAIN_EPOCHS}-lr${PRETRAIN_LR}-c${PRETRAIN_CONTEXT}.gguf`);
  if (!fs.existsSync(base)) {
    fs.mkdirSync(PEERS, { recursive: true });
    writeTinyModel({ out: base, layers: s.layers, embd: s.embd, heads: s.heads, kvHeads: s.kvHeads, ff: s.ff, type: 'f32', vocab: VOCAB, seed: 5, contextLength: 2048 });
  }
  if (fs.existsSync(pretrained)) return { pretrained, base, seconds: null };
  log(`pretraining the stand-in (${s.layers} x ${s.embd}, 32k SPM vocabulary) with llama-finetune on ${PRETRAIN_BYTES / 1e6} MB of TypeScript from node_modules (once, cached) ...`);
  const m = await measure(path.join(bin, 'llama-finetune'), ['-m', base, '-f', pretrainText(), '-c', String(PRETRAIN_CONTEXT), '-b', String(PRETRAIN_CONTEXT), '-ub', String(PRETRAIN_CONTEXT), '--epochs', String(PRETRAIN_EPOCHS), '-lr', String(PRETRAIN_LR), '-t', '2', '-o', `${pretrained}.tmp`]);
  fs.writeFileSync(`${pretrained}.log`, m.stderr); // llama-finetune's progress: its training and validation loss
  fs.renameSync(`${pretrained}.tmp`, pretrained);
  return { pretrained, base, seconds: m.wallSeconds };
}

async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const { pretrained, base, seconds } = await standInBackbone(buildPeer(), log);
  const ws = corpus(32_000);
  const settings = { bytes: PRETRAIN_BYTES, epochs: PRETRAIN_EPOCHS, learningRate: PRETRAIN_LR, windowTokens: PRETRAIN_CONTEXT, text: 'TypeScript from node_modules: half @types/* declarations, half the .ts sources packages ship, file by file in turn' };
  // A cached stand-in keeps the pretraining time its run measured (same settings).
  const file = path.join(ROOT, 'bench', 'results', 'standIn.json');
  const previous = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as { pretrain?: Record<string, unknown> }).pretrain : undefined;
  const same = previous !== undefined && Object.entries(settings).every(([k, v]) => previous[k] === v);
  const out = {
    model: { ...STAND_IN, vocabulary: 'llama SPM 32k (llama.cpp models/ggml-vocab-llama-spm.gguf)', type: 'f32', bytes: fs.statSync(pretrained).size },
    pretrain: { ...settings, seconds: seconds ?? (same ? previous.seconds : null) },
    heldOutLossOnWorkspace: { pretrained: await heldOutLoss(pretrained, ws.workspace, 2), randomWeights: await heldOutLoss(base, ws.workspace, 2) },
  };
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`stand-in: pretrain ${seconds === null ? 'cached' : `${seconds.toFixed(0)} s`}; held-out loss on the workspace ${out.heldOutLossOnWorkspace.pretrained.toFixed(4)} (random weights ${out.heldOutLossOnWorkspace.randomWeights.toFixed(4)})`);
}

if (require.main === module) {
  void main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
