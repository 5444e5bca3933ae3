import { attentionHeadsOf, jobShape } from './AdapterConfig';
import { JOB_SETTINGS, JobSettingName, JobSettings, settingsProblem, SettingProblem } from './jobSettings';
import { MAX_ATTENTION_SCORES, MAX_ROWS_PER_BATCH } from './limits';
import type { JobConfig, ModelSpec } from './messages';

/** Each wire field of a job's config that is a job setting, and which (`totalSteps` is the setting `steps`). */
const WIRE_FIELD_SETTING = {
  reduction: 'reduction', bits: 'bits', seqLen: 'seqLen', batchSize: 'batchSize', totalSteps: 'steps', learningRate: 'learningRate',
  seed: 'seed', checkpointEvery: 'checkpointEvery', labelPrivate: 'labelPrivate', sideNetwork: 'sideNetwork', joinAfterNorm: 'joinAfterNorm',
  initFromBackbone: 'initFromBackbone', headRank: 'headRank',
} as const satisfies Partial<Record<keyof JobConfig, JobSettingName>>;

/**
 * The rules between settings that need no model (the device checks them
 * before any work; jobConfigProblem checks them again on the wire config).
 */
export function settingRulesProblem(s: Pick<JobSettings, 'joinAfterNorm' | 'labelPrivate'>, nameOf: (setting: JobSettingName) => string = (n) => n): SettingProblem | undefined {
  if (s.joinAfterNorm && s.labelPrivate) {
    return {
      name: nameOf('joinAfterNorm'),
      message: `${nameOf('joinAfterNorm')} is for the standard mode: label-private training (the default with a team server) joins before the final norm; turn ${nameOf('labelPrivate')} off to use it.`,
    };
  }
  return undefined;
}

/**
 * The first problem of a job's config on a model, or undefined: every setting
 * within its row's range (common/jobSettings.ts), then the rules between
 * settings and the model. The device checks the config it builds and the
 * server checks the config it receives, with this one function; `nameOf`
 * says how the caller names a setting (the CLI: its flag).
 */
export function jobConfigProblem(
  c: JobConfig,
  model: Pick<ModelSpec, 'layers' | 'hiddenSize' | 'vocabularySize'>,
  nameOf: (setting: JobSettingName) => string = (s) => s,
): SettingProblem | undefined {
  const values = Object.fromEntries(Object.entries(WIRE_FIELD_SETTING).map(([field, setting]) => [setting, c[field as keyof typeof WIRE_FIELD_SETTING]]));
  const problem = settingsProblem(JOB_SETTINGS, values, nameOf) ?? settingRulesProblem(c, nameOf);
  if (problem) return problem;
  if (c.initFromBackbone && c.initFromAdapter) return { name: nameOf('initFromBackbone'), message: 'a job starts from the backbone\'s weights or from an earlier adapter, not both.' };
  const L = model.layers;
  const d = model.hiddenSize;
  const t = c.tappedLayers;
  if (t.length === 0 || t.some((x, i) => x >= L || (i > 0 && x <= t[i - 1]!)) || t[t.length - 1] !== L - 1) {
    return { name: nameOf('skipLayers'), message: `the tapped layers must ascend, lie within the model's ${L} layers and end with its last (${nameOf('skipLayers')} at most ${L - 1}).` };
  }
  if (d % c.reduction !== 0 || c.reduction > d) return { name: nameOf('reduction'), message: `${nameOf('reduction')} must divide the model's hidden size ${d} (got ${c.reduction}).` };
  if (c.seqLen * c.batchSize > MAX_ROWS_PER_BATCH) {
    return { name: nameOf('batchSize'), message: `${nameOf('seqLen')} x ${nameOf('batchSize')} must be at most ${MAX_ROWS_PER_BATCH} tokens per batch.` };
  }
  if (c.warmupSteps > c.totalSteps) return { name: nameOf('steps'), message: `the warm-up (${c.warmupSteps} steps) must not exceed the job's ${c.totalSteps} steps.` };
  if (c.sideNetwork === 2) {
    const { attentionHeads } = attentionHeadsOf(jobShape(c, model));
    if (c.batchSize * attentionHeads * c.seqLen * c.seqLen > MAX_ATTENTION_SCORES) {
      return {
        name: nameOf('seqLen'),
        message: `${nameOf('batchSize')} x ${nameOf('seqLen')}^2 is too large for side network 2's attention on this model (at most ${Math.floor(MAX_ATTENTION_SCORES / attentionHeads)}).`,
      };
    }
  }
  return undefined;
}
