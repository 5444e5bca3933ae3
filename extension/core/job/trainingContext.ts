import { Backbone } from '../model/Backbone';
import { heldOutFiles, TrainingContext } from '../workspace/dataset';
import { ScannedFile } from '../workspace/scanWorkspace';
import { WorkspaceIndex } from '../workspace/WorkspaceIndex';
import { trainingContext } from '../completion/retrievedContext';

/** Context for training sequences (contextRate > 0): retrieved from the training files only, up to half a sequence. */
export async function trainingContextOf(bb: Backbone, workspace: string, files: ScannedFile[], o: { contextRate: number; seed: number; heldOutFraction: number }, seqLen: number): Promise<TrainingContext | undefined> {
  if (o.contextRate <= 0) return undefined;
  const held = new Set(heldOutFiles(files, o).map((f) => f.path));
  const index = await WorkspaceIndex.ofFiles(workspace, files.filter((f) => !held.has(f.path)));
  const count = (t: string): number => bb.tokenize(t, false).length;
  return {
    rate: o.contextRate, maxTokens: Math.floor(seqLen / 2), bos: bb.info.addsBos ? bb.nativeInfo.bos : undefined,
    tokensFor: (file, query, max) => bb.tokenize(trainingContext(index, file, query, max, count), false),
  };
}
