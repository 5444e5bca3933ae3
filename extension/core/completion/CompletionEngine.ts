import * as path from 'node:path';
import { HOST_SETTINGS } from '../../../common/jobSettings';
import { ContextSnippet, contextQuery, EditorSnippet, retrievedContext } from './retrievedContext';
import { WorkspaceIndex } from '../workspace/WorkspaceIndex';
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
/** Tokens of retrieved context from other files before the text at the cursor (a setting; 0: none). */
export const COMPLETION_CONTEXT_TOKENS: number = HOST_SETTINGS.completionContextTokens.default;

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
  /** The file being completed, relative to the workspace (forward slashes): with it, context from other files is retrieved. */
  file?: string;
  /** Budget of that context, tokens. Default COMPLETION_CONTEXT_TOKENS; 0: none. */
  contextTokens?: number;
  /** Snippets the editor found (definitions of the symbols near the cursor, recent edits): in the context before retrieved ones. */
  editorSnippets?: EditorSnippet[];
}

/** A completion and what went into it. */
export interface CompletionDetails {
  text: string;
  /** The retrieved context before the text at the cursor ('' when none), and its files. */
  context: string;
  contextFiles: string[];
  /** The context's snippets, the one nearest the cursor first, and where each came from (its text aside). */
  contextSnippets: Omit<ContextSnippet, 'text' | 'score'>[];
  promptTokens: number;
  /** Prompt tokens the backbone ran (the rest came from its cache of the previous prompt). */
  promptTokensEvaluated: number;
  /** Seconds until the first new token: the prompt's forward pass. */
  promptSeconds: number;
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
export function completionPrompt(bb: Backbone, prefix: string, options: CompleteOptions = {}, context = ''): { mode: CompletionMode; tokens: Int32Array } {
  const before = promptWindow(prefix, options.prefixChars ?? COMPLETION_PREFIX_CHARS);
  const { fimPre, fimSuf, fimMid } = bb.nativeInfo;
  const vocab = bb.info.vocabularySize;
  const fim = [fimPre, fimSuf, fimMid].every((t) => Number.isInteger(t) && t >= 0 && t < vocab);
  const mode: CompletionMode = fim ? 'fill-in-the-middle' : 'prefix only';
  const useFim = fim && options.suffix !== undefined;
  const head = useFim ? (bb.info.addsBos ? [bb.nativeInfo.bos, fimPre] : [fimPre]) : bb.info.addsBos ? [bb.nativeInfo.bos] : [];
  let contextTokens = context ? Array.from(bb.tokenize(context, false)) : [];
  let prefixTokens = Array.from(bb.tokenize(before, false));
  const suffixTokens = useFim ? Array.from(bb.tokenize(options.suffix!.slice(0, options.suffixChars ?? COMPLETION_SUFFIX_CHARS), false)) : [];
  // A prompt longer than the context window loses the retrieved context first, then the start of its prefix, never its FIM tokens.
  const room = bb.contextSize - (options.maxTokens ?? 24) - head.length - suffixTokens.length - (useFim ? 2 : 0);
  if (prefixTokens.length > room) prefixTokens = prefixTokens.slice(prefixTokens.length - Math.max(0, room));
  if (contextTokens.length > room - prefixTokens.length) contextTokens = [];
  // The context first: it changes only when the cursor's line does, so the cache of it serves every keystroke on a line.
  const body = [...head, ...contextTokens, ...prefixTokens];
  return { mode, tokens: Int32Array.from(useFim ? [...body, fimSuf, ...suffixTokens, fimMid] : body) };
}

/**
 * Completions from the backbone on this device, with the workspace's adapter
 * when one is stored for this model. One backbone, loaded on first use and
 * reused; the adapter follows the workspace asked about.
 */
export class CompletionEngine {
  private bb: Promise<Backbone> | undefined;
  private activeAdapter: string | undefined; // adapter file in use, or undefined for the base model
  /** Each workspace's search index for retrieved context, opened on its first completion; `ready` once opened. */
  private readonly indexes = new Map<string, Promise<WorkspaceIndex>>();
  private readonly ready = new Map<string, WorkspaceIndex>();
  /** The last context built, for the next keystroke on the same line. */
  private lastContext: { key: string; text: string; files: string[]; snippets: Omit<ContextSnippet, 'text' | 'score'>[] } | undefined;

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
    return (await this.completion(workspace, prefix, options)).text;
  }

  /** complete(), with the context it used and the prompt's cost. */
  async completion(workspace: string | undefined, prefix: string, options: CompleteOptions = {}): Promise<CompletionDetails> {
    const bb = await this.backbone();
    const adapter = options.fineTuned === false || !workspace ? undefined : await this.adapterFor(workspace);
    await this.use(bb, adapter);
    const context = await this.contextFor(bb, workspace, prefix, options);
    const { tokens } = completionPrompt(bb, prefix, options, context.text);
    const indent = cursorIndent(prefix);
    const g = await generate(bb, tokens, {
      maxTokens: options.maxTokens ?? 24, stop: options.singleLine ? ['\n'] : ['\n\n'], signal: options.signal,
      endAt: (text) => completionEnd(text, indent),
    });
    return { text: g.text, context: context.text, contextFiles: context.files, contextSnippets: context.snippets, promptTokens: g.promptTokens, promptTokensEvaluated: g.promptTokensEvaluated, promptSeconds: g.promptSeconds };
  }

  /** The search index of `workspace` for retrieved context (opened, or built, on first use). */
  contextIndex(workspace: string): Promise<WorkspaceIndex> {
    const key = path.resolve(workspace);
    let index = this.indexes.get(key);
    if (!index) {
      index = WorkspaceIndex.open(key, this.storeDir);
      this.indexes.set(key, index);
      index.then((i) => this.ready.set(key, i), () => this.indexes.delete(key)); // a failed opening is tried again at the next completion
    }
    return index;
  }

  /**
   * Keeps an open index current: `file` (workspace-relative) was saved with
   * `text`, deleted (text undefined), or renamed from `renamedFrom`. Written
   * to the device store a few seconds later.
   */
  async fileChanged(workspace: string, file: string, text: string | undefined, renamedFrom?: string): Promise<void> {
    const index = this.indexes.get(path.resolve(workspace));
    if (!index) return; // built with the files as they are when it is first needed
    const i = await index;
    if (renamedFrom !== undefined) i.removeFile(renamedFrom);
    if (file.split('/').pop() === '.gitignore') i.rulesChanged();
    if (text === undefined) i.removeFile(file);
    else i.setFile(file, text);
    this.lastContext = undefined;
    i.saveSoon();
  }

  private async contextFor(bb: Backbone, workspace: string | undefined, prefix: string, options: CompleteOptions): Promise<NonNullable<CompletionEngine['lastContext']>> {
    const budget = options.contextTokens ?? COMPLETION_CONTEXT_TOKENS;
    const none = { key: '', text: '', files: [], snippets: [] };
    if (!workspace || options.file === undefined || budget <= 0) return none;
    const index = this.ready.get(path.resolve(workspace));
    if (!index) {
      // Completions do not wait for the index: the first ones of a session go without context while it opens.
      void this.contextIndex(workspace).catch(() => undefined);
      return none;
    }
    const editor = options.editorSnippets ?? [];
    const key = JSON.stringify([path.resolve(workspace), options.file, budget, contextQuery(prefix), editor]);
    if (this.lastContext?.key !== key) {
      const found = retrievedContext(index, options.file, prefix, budget, (t) => bb.tokenize(t, false).length, editor);
      // In the order taken: the nearest the cursor first (the text puts the first taken last).
      const snippets = found.snippets.map(({ path: p, startLine, source }) => ({ path: p, startLine, source }));
      this.lastContext = { key, text: found.text, files: [...new Set(snippets.map((x) => x.path))], snippets };
    }
    return this.lastContext;
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
    for (const index of this.indexes.values()) await (await index.catch(() => undefined))?.flush().catch(() => undefined);
    this.indexes.clear();
    this.ready.clear();
    const bb = this.bb;
    this.bb = undefined;
    if (bb) (await bb.catch(() => undefined))?.dispose();
  }
}
