import type { ResolvedJobSettings } from '../../../common/jobSettings';

/** The job's settings as a host lists them (the dashboard's configuration): from the job's own settings, a resumed job's included. */
export function settingsLines(s: ResolvedJobSettings): Record<string, string> {
  return {
    'activation bits': String(s.bits),
    'skipped layers': String(s.skipLayers),
    'label-private': s.labelPrivate ? 'yes (target ids stay here)' : 'no',
    'side network': s.sideNetwork === 2 ? '2 (with attention)' : '1 (per token)',
    'sequence length': String(s.seqLen),
    'batch size': String(s.batchSize),
    ...(s.steps !== undefined ? { steps: String(s.steps) } : { epochs: String(s.epochs) }),
  };
}
