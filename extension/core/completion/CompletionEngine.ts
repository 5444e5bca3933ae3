import { HOST_SETTINGS } from '../../../common/jobSettings';
import { AdapterStore } from '../store/AdapterStore';
import { Backbone } from '../model/Backbone';
import { completionEnd, cursorIndent } from './completionStops';
import { evaluateWorkspace } from '../workspace/evaluateWorkspace';
import { generate } from './generate';
import { modelFingerprint } from '../model/modelFingerprint';

/** Characters of the text before the cursor sent to the model, at least (a setting). */
export const COMPLETION_PREFIX_CHARS: number = HOST_SETTINGS.completionPrefixChars.default;
/** Characters of the text after the cursor sent in fill-in-the-middle mode (a setting). */
export const COMPLETION_SUFFIX_CHARS: number = HOST_SETTINGS.completionSuffixChars.default;

/** How completions are prompted: fill-in-the-middle when the model declares its tokens, else the text before the cursor only. */
export type CompletionMode = 'fill-in-the-middle' | 'prefix only';

/** Options of one completion. */
export interface CompleteOptions {
  /** Use the workspace's adapter when there is one. Default true. */
  fineTuned?: boolean;
  /** Most new tokens. Default 24. */
  maxTokens?: number;
  /** The text after the cursor (fill-in-the-middle models only). Default: none. */
  suffix?: string;
  /** Budgets of the text before and after the cursor, characters. Defaults COMPLETION_PREFIX_CHARS, COMPLETION_SUFFIX_CHARS. */
  prefixChars?: number;
  suffixChars?: number;
  /** Cancels the completion (a newer keystroke). */
  signal?: AbortSignal;
  /** End at the first line break. Default false: several lines, until the block or the enclosing bracket ends. */
  singleLine?: boolean;
}
/** The window's start moves in steps of this many characters, so consecutive keystrokes share a prompt prefix. */
export const PREFIX_WINDOW_STEP = 512;

/**
 * The text before the cursor a completion uses: at least
 * COMPLETION_PREFIX_CHARS, starting at a multiple of PREFIX_WINDOW_STEP, so
 * that typing keeps the prompt's start in place and the backbone reuses the
 * cache of everything before the cursor's line.
 */
export function promptWindow(prefix: string, chars = COMPLETION_PREFIX_CHARS): string {
  if (prefix.length <= chars) return prefix;
  return prefix.slice(Math.floor((prefix.length - chars) / PREFIX_WINDOW_STEP) * PREFIX_WINDOW_STEP);
}

/**
 * The prompt's token ids: in fill-in-the-middle mode
 * [BOS] <fim_prefix> prefix <fim_suffix> suffix <fim_middle> (the
 * prefix-suffix-middle order of Qwen2.5-Coder, CodeLlama and StarCoder);
 * otherwise the prefix alone.
 */
export function completionPrompt(bb: Backbone, prefix: string, options: CompleteOptions = {}): { mode: CompletionMode; tokens: Int32Array } {
  const before = promptWindow(prefix, options.prefixChars ?? COMPLETION_PREFIX_CHARS);
  const { fimPre, fimSuf, fimMid } = bb.nativeInfo;
  const vocab = bb.info.vocabularySize;
  const fim = [fimPre, fimSuf, fimMid].every((t) => Number.isInteger(t) && t >= 0 && t < vocab);
  if (!fim || options.suffix === undefined) return { mode: fim ? 'fill-in-the-middle' : 'prefix only', tokens: bb.tokenize(before) };
  const after = options.suffix.slice(0, options.suffixChars ?? COMPLETION_SUFFIX_CHARS);
  const head = bb.info.addsBos ? [bb.nativeInfo.bos, fimPre] : [fimPre];
  let prefixTokens = Array.from(bb.tokenize(before, false));
  const suffixTokens = Array.from(bb.tokenize(after, false));
  // A prompt longer than the context loses the start of its prefix, never its FIM tokens.
  const room = bb.contextSize - (options.maxTokens ?? 24) - head.length - suffixTokens.length - 2;
  if (prefixTokens.length > room) prefixTokens = prefixTokens.slice(prefixTokens.length - Math.max(0, room));
  return { mode: 'fill-in-the-middle', tokens: Int32Array.from([...head, ...prefixTokens, fimSuf, ...suffixTokens, fimMid]) };
}

/**
 * Completions from the backbone on this device, with the workspace's adapter
 * when one is stored for this model. One backbone, loaded on first use and
 * reused; the adapter follows the workspace asked about.
 */
export class CompletionEngine {
  private bb: Promise<Backbone> | undefined;
  private activeAdapter: string | undefined; // adapter file in use, or undefined for the base model

  constructor(private readonly modelPath: string, private readonly storeDir: string) {}

  private backbone(): Promise<Backbone> {
    this.bb ??= Backbone.open(this.modelPath, { contextSize: 2048, maxSequences: 4 });
    this.bb.catch(() => (this.bb = undefined));
    return this.bb;
  }

  /** The stored adapter for a workspace and this model, if any. */
  async adapterFor(workspace: string): Promise<string | undefined> {
    const fp = await modelFingerprint(this.modelPath);
    return new AdapterStore(this.storeDir).find(workspace, fp)?.file;
  }

  private async use(bb: Backbone, adapter: string | undefined): Promise<void> {
    if (adapter === this.activeAdapter) return;
    if (adapter) await bb.useAdapterFile(adapter);
    else await bb.clearAdapter();
    this.activeAdapter = adapter;
  }

  /** How this model's completions are prompted. */
  async mode(): Promise<CompletionMode> {
    return completionPrompt(await this.backbone(), '').mode;
  }

  /** A short continuation at the cursor (stops at a blank line). */
  async complete(workspace: string | undefined, prefix: string, options: CompleteOptions = {}): Promise<string> {
    const bb = await this.backbone();
    const adapter = options.fineTuned === false || !workspace ? undefined : await this.adapterFor(workspace);
    await this.use(bb, adapter);
    const { tokens } = completionPrompt(bb, prefix, options);
    const indent = cursorIndent(prefix);
    const g = await generate(bb, tokens, {
      maxTokens: options.maxTokens ?? 24, stop: options.singleLine ? ['\n'] : ['\n\n'], signal: options.signal,
      endAt: (text) => completionEnd(text, indent),
    });
    return g.text;
  }

  /** Held-out perplexity with and without the workspace's adapter, and side-by-side samples. */
  async compare(workspace: string, prompts: string[]): Promise<{ basePerplexity: number; tunedPerplexity: number; samples: { prompt: string; base: string; tuned: string }[] }> {
    const bb = await this.backbone();
    const adapter = await this.adapterFor(workspace);
    await this.use(bb, undefined);
    const base = await evaluateWorkspace(bb, workspace);
    const baseSamples = [];
    for (const p of prompts) baseSamples.push((await generate(bb, p, { maxTokens: 24, stop: ['\n\n'] })).text);
    await this.use(bb, adapter);
    const tuned = await evaluateWorkspace(bb, workspace);
    const samples = [];
    for (const [i, p] of prompts.entries()) samples.push({ prompt: p.slice(-80), base: baseSamples[i]!, tuned: (await generate(bb, p, { maxTokens: 24, stop: ['\n\n'] })).text });
    return { basePerplexity: Math.exp(base.heldOutLoss), tunedPerplexity: Math.exp(tuned.heldOutLoss), samples };
  }

  async dispose(): Promise<void> {
    const bb = this.bb;
    this.bb = undefined;
    if (bb) (await bb.catch(() => undefined))?.dispose();
  }
}
