import { MobiError } from '../MobiError';
import { Backbone } from '../model/Backbone';
import { buildDataset, DatasetOptions } from './dataset';
import { ScanOptions, scanWorkspaceAsync } from './scanWorkspace';

/**
 * Held-out loss of a workspace on this device: the same scan, split and
 * sequences as a fine-tuning job with the same options, with whatever adapter
 * the backbone is using.
 */
export async function evaluateWorkspace(bb: Backbone, workspace: string, options: DatasetOptions & { scan?: ScanOptions } = {}): Promise<{ heldOutLoss: number; tokens: number }> {
  const heldOut = await heldOutSequences(bb, workspace, options);
  let lossSum = 0;
  let tokens = 0;
  const longest = heldOut.reduce((a, s) => Math.max(a, s.length), 1);
  const per = Math.max(1, Math.min(bb.maxSequences, Math.floor(bb.contextSize / longest)));
  for (let i = 0; i < heldOut.length; i += per) {
    const r = await bb.sequenceLoss(heldOut.slice(i, i + per));
    lossSum += r.lossSum;
    tokens += r.tokens;
  }
  const heldOutLoss = lossSum / tokens;
  if (tokens === 0) throw new MobiError('EMPTY_WORKSPACE', `No held-out tokens in ${workspace}: the workspace is too small to hold files out.`);
  // Never a success without a number: a loss that is not finite means the adapter (or the model) is broken.
  if (!Number.isFinite(heldOutLoss)) throw new MobiError('ADAPTER_CORRUPT', 'The held-out loss is not a finite number: the adapter (or the model) gives NaN or infinite outputs.');
  return { heldOutLoss, tokens };
}

/** The held-out sequences evaluateWorkspace scores: every token of each after its first. */
export async function heldOutSequences(bb: Backbone, workspace: string, options: DatasetOptions & { scan?: ScanOptions } = {}): Promise<Int32Array[]> {
  const scan = await scanWorkspaceAsync(workspace, options.scan);
  return buildDataset(scan.files, (text) => bb.tokenize(text), options).heldOut;
}
