/**
 * Builds the quality benchmark's stand-in once (bench/lib/standInModel.ts) and
 * reports its vocabulary coverage and held-out loss:
 *
 *   npm run bench:stand-in      (writes bench/results/standIn.json)
 *   npm run bench:stand-in -- --stop-at-step N
 *                               (builds in parts: stops with a checkpoint after step N;
 *                               the next run goes on from it)
 *   npm run bench:stand-in -- --baselines
 *                               (no pretraining: the corpus and tokenizer's vocabulary
 *                               coverage and n-gram baselines, standInBaselines.json)
 */
import { writeResult } from './lib/writeResult';
import { qualityWorkspace } from './lib/qualityCorpus';
import { buildStandIn, corpusBaselines, describeStandIn, standInBackbone, standInFiles } from './lib/standInModel';
import { machineDescription } from './lib/benchModels';

async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  if (process.argv.includes('--baselines')) {
    const files = await standInFiles(log);
    const out: Record<string, unknown> = { ...(await corpusBaselines(files, qualityWorkspace().dir)), machine: machineDescription() };
    writeResult('standInBaselines.json', out);
    console.log(`corpus ${(files.corpus.bytes / 1e6).toFixed(1)} MB from ${files.corpus.packages} packages; vocabulary coverage ${(100 * (out.vocabCoverage as number)).toFixed(1)}%; held-out loss of add-one n-grams: unigram ${(out.unigramHeldOutLoss as number).toFixed(4)}, bigram ${(out.bigramHeldOutLoss as number).toFixed(4)}`);
    return;
  }
  const stop = process.argv.indexOf('--stop-at-step');
  if (stop >= 0) {
    const step = Number(process.argv[stop + 1]);
    if (!Number.isInteger(step) || step < 1) throw new RangeError('--stop-at-step takes a positive whole number of steps');
    if ((await buildStandIn(log, step)) === null) return;
  }
  const stand = await standInBackbone(log);
  const out = await describeStandIn(stand, qualityWorkspace().dir);
  writeResult('standIn.json', out);
  console.log(`stand-in: pretrain ${stand.seconds === null ? 'cached' : `${stand.seconds.toFixed(0)} s`}; vocabulary coverage ${(100 * (out.vocabCoverage as number)).toFixed(1)}%; held-out loss ${(out.heldOutLoss as number).toFixed(4)} (random weights ${(out.heldOutLossRandomWeights as number).toFixed(4)})`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
