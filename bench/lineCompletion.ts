/**
 * What a user feels: line completions in held-out files, before and after
 * fine-tuning. On the peer benchmark's pretrained backbone (4 x 256, pretrained
 * by llama-finetune on @types/node, cached), fine-tuned on this repository's
 * first 32 KB of source: at 3 cursor positions in every held-out line of at
 * least 12 characters, the model gets the file up to the cursor (the last 1,500
 * characters) and greedily completes the rest of the line (at most 32 tokens,
 * cut at the line's end). Reported per variant: exact-match rate (the
 * completion equals the rest of the line, trailing spaces aside) and mean
 * character-level edit similarity (1 - Levenshtein distance / longer length).
 * Variants: the base model; our side tuning (v1, 4 epochs, the adapter inside
 * llama.cpp's forward); llama-finetune (full fine-tuning) at the peer
 * benchmark's best learning rate, 8 epochs. The context axis (withContext):
 * the base model and ours again, each prompt carrying the context the
 * completions retrieve from the workspace's other files (the product's index,
 * default budget of COMPLETION_CONTEXT_TOKENS tokens).
 *
 *   npm run bench:lines [-- --backbone standin] [-- --context-only]   (--context-only: the context axis alone, the other rows kept from the last run)   (standin: the fair 6 x 384 stand-in, bench/standIn.ts)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { heldOutFiles } from '../extension/core/workspace/dataset';
import { FineTuneJob } from '../extension/core/job/FineTuneJob';
import { scanWorkspace } from '../extension/core/workspace/scanWorkspace';
import { BATCH, buildPeer, corpus, measure, PEERS, ROOT, SEQ } from './lib/peerHarness';
import { machineDescription } from './lib/benchModels';
import { pretrainedBackbone } from './lib/peerConvergence';
import { standInBackbone } from './lib/standInModel';
import { LineScore, MAX_TOKENS, positions, PROMPT_CHARS, score } from './lib/lineScore';
import { COMPLETION_CONTEXT_TOKENS } from '../extension/core/completion/CompletionEngine';
import { writeResult } from './lib/writeResult';

const FINETUNE_BYTES = 32_000;
const OUR_EPOCHS = 4;
const PEER_EPOCHS = 8;
/** Share of training sequences with retrieved context in the second adapter (the contextRate setting). */
const CONTEXT_RATE = 0.5;
/** Cursor positions per held-out line: 6 gives the context axis at least 500 positions. */
const PER_LINE = 6;
async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const bin = buildPeer();
  const standin = process.argv.includes('standin');
  const { pretrained: PRETRAINED } = standin ? await standInBackbone(log) : await pretrainedBackbone(bin, log);
  const tag = standin ? 'standin-' : '';
  const ws = corpus(FINETUNE_BYTES);
  const cases = positions(ws.workspace, PER_LINE);
  log(`${cases.length} cursor positions in the held-out files`);

  const ours = path.join(PEERS, `lines-${tag}ours-e${OUR_EPOCHS}.mobi`);
  if (!fs.existsSync(ours)) {
    const store = fs.mkdtempSync(path.join(PEERS, 'lines-store-'));
    const r = await new FineTuneJob({ workspace: ws.workspace, model: PRETRAINED, storeDir: store, seqLen: SEQ, batchSize: BATCH, epochs: OUR_EPOCHS, seed: 1 }).run();
    fs.copyFileSync(r.adapter, ours);
    fs.rmSync(store, { recursive: true, force: true });
    log(`ours: ${r.steps} steps, held-out ${r.heldOutLossBefore.toFixed(4)} -> ${r.heldOutLossAfter.toFixed(4)}`);
  }
  // The same, a share of its training sequences carrying retrieved context (contextRate): does the adapter learn to use it?
  const oursCtx = path.join(PEERS, `lines-${tag}ours-context${CONTEXT_RATE}-e${OUR_EPOCHS}.mobi`);
  if (!fs.existsSync(oursCtx)) {
    const store = fs.mkdtempSync(path.join(PEERS, 'lines-store-'));
    const r = await new FineTuneJob({ workspace: ws.workspace, model: PRETRAINED, storeDir: store, seqLen: SEQ, batchSize: BATCH, epochs: OUR_EPOCHS, seed: 1, contextRate: CONTEXT_RATE }).run();
    fs.copyFileSync(r.adapter, oursCtx);
    fs.rmSync(store, { recursive: true, force: true });
    log(`ours trained with context: ${r.steps} steps, held-out ${r.heldOutLossBefore.toFixed(4)} -> ${r.heldOutLossAfter.toFixed(4)}`);
  }
  const peersJson = JSON.parse(fs.readFileSync(path.join(ROOT, 'bench', 'results', 'peers.json'), 'utf8')) as { results: { convergence: { peerBestLearningRate: number } } };
  const lr = peersJson.results.convergence.peerBestLearningRate;
  const peer = path.join(PEERS, `lines-${tag}peer-lr${lr}-e${PEER_EPOCHS}.gguf`);
  if (!fs.existsSync(peer)) {
    const files = scanWorkspace(ws.workspace).files;
    const held = new Set(heldOutFiles(files).map((f) => f.path));
    const trainText = path.join(PEERS, 'lines-train.txt');
    fs.writeFileSync(trainText, files.filter((f) => !held.has(f.path)).map((f) => f.text).join(''));
    await measure(path.join(bin, 'llama-finetune'), ['-m', PRETRAINED, '-f', trainText, '-c', String(SEQ), '-b', String(SEQ), '-ub', String(SEQ), '--epochs', String(PEER_EPOCHS), '-lr', String(lr), '-t', '2', '-o', `${peer}.tmp`]);
    fs.renameSync(`${peer}.tmp`, peer);
    log(`peer: llama-finetune lr ${lr}, ${PEER_EPOCHS} epochs`);
  }

  const show = (k: string, v: LineScore): void => log(`${k}: exact match ${(100 * v.exactMatch).toFixed(1)}%, edit similarity ${v.editSimilarity.toFixed(3)}, first token ${(1000 * v.firstTokenSeconds).toFixed(1)} ms (${v.seconds.toFixed(0)} s)`);
  // --context-only: the rows without context are taken from the last run's file (same positions and code path), only the context axis runs.
  const outFile = path.join(ROOT, 'bench', 'results', `lineCompletion${standin ? '-standin' : ''}.json`);
  const previous = process.argv.includes('--context-only') && fs.existsSync(outFile) ? (JSON.parse(fs.readFileSync(outFile, 'utf8')) as { positions: number; results: Record<string, LineScore> }) : undefined;
  if (previous && previous.positions !== cases.length) throw new Error(`--context-only: the last run had ${previous.positions} positions, this one ${cases.length}`);
  const results = previous?.results as { base: LineScore; oursV1: LineScore; oursTrainedWithContext: LineScore; peerFullFineTune: LineScore } | undefined ?? {
    base: await score(PRETRAINED, undefined, cases),
    oursV1: await score(PRETRAINED, ours, cases),
    oursTrainedWithContext: await score(PRETRAINED, oursCtx, cases),
    peerFullFineTune: await score(peer, undefined, cases),
  };
  for (const [k, v] of Object.entries(results)) show(k, v);
  const context = { workspace: ws.workspace, tokens: COMPLETION_CONTEXT_TOKENS };
  const withContext = {
    base: await score(PRETRAINED, undefined, cases, context),
    ours: await score(PRETRAINED, ours, cases, context),
    oursTrainedWithContext: await score(PRETRAINED, oursCtx, cases, context),
  };
  for (const [k, v] of Object.entries(withContext)) show(`${k} + context`, v);
  const diff = (a: LineScore, b: LineScore): { exactMatch: number; editSimilarity: number } => ({ exactMatch: a.exactMatch - b.exactMatch, editSimilarity: a.editSimilarity - b.editSimilarity });
  const out = {
    backbone: standin
      ? '6 x 384 llama (F32), llama SPM 32k vocabulary, pretrained by llama-finetune on 1 MB of @types declarations (issue 12\'s stand-in)'
      : '4 x 256 llama (F32), pretrained by llama-finetune on 96 KB of @types/node; the peer benchmark\'s quick variant, not issue 12\'s stand-in',
    workspace: `this repository's first ${FINETUNE_BYTES / 1000} KB of source; positions in its held-out files`,
    positions: cases.length, positionsPerLine: PER_LINE, promptChars: PROMPT_CHARS, maxTokens: MAX_TOKENS, ourEpochs: OUR_EPOCHS, peer: { learningRate: lr, epochs: PEER_EPOCHS },
    results,
    contextTokens: COMPLETION_CONTEXT_TOKENS,
    withContext,
    trainingContextRate: CONTEXT_RATE,
    /** Ours with context against the best ours row (the only one, oursV1) and against the base model with context. */
    oursWithContextMinusOurs: diff(withContext.ours, results.oursV1),
    oursTrainedWithContextMinusOurs: diff(withContext.oursTrainedWithContext, withContext.ours),
    oursWithContextMinusBaseWithContext: diff(withContext.ours, withContext.base),
    /** Mean seconds to the first token with the context over without, each position's prompt evaluated cold (no cache of an earlier keystroke: bench:context measures that). */
    firstTokenWithContextOverWithout: withContext.ours.firstTokenSeconds / results.oursV1.firstTokenSeconds,
    machine: machineDescription(),
  };
  writeResult(`lineCompletion${standin ? '-standin' : ''}.json`, out);
  console.log([...Object.entries(results), ...Object.entries(withContext).map(([k, v]) => [`${k}+context`, v] as const)].map(([k, v]) => `${k} ${(100 * v.exactMatch).toFixed(1)}% exact, ${v.editSimilarity.toFixed(3)} similarity`).join('; '));
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
