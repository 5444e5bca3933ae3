/**
 * Builds the quality benchmark's stand-in once (bench/lib/standInModel.ts) and
 * reports its vocabulary coverage and held-out loss:
 *
 *   npm run bench:stand-in      (writes bench/results/standIn.json)
 */
import { writeResult } from './lib/writeResult';
import { buildPeer } from './lib/peerHarness';
import { qualityWorkspace } from './lib/qualityCorpus';
import { describeStandIn, standInBackbone } from './lib/standInModel';

async function main(): Promise<void> {
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const stand = await standInBackbone(buildPeer(), log);
  const out = await describeStandIn(stand, qualityWorkspace().dir);
  writeResult('standIn.json', out);
  console.log(`stand-in: pretrain ${stand.seconds === null ? 'cached' : `${stand.seconds.toFixed(0)} s`}; vocabulary coverage ${(100 * (out.vocabCoverage as number)).toFixed(1)}%; held-out loss ${(out.heldOutLoss as number).toFixed(4)} (random weights ${(out.heldOutLossRandomWeights as number).toFixed(4)})`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
