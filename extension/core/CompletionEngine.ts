import * as fs from 'node:fs';
import { AdapterStore } from './AdapterStore';
import { Backbone } from './Backbone';
import { evaluateWorkspace } from './evaluateWorkspace';
import { generate } from './generate';
import { modelFingerprint } from './modelFingerprint';

/** Characters of the text before the cursor sent to the model, at least. */
export const COMPLETION_PREFIX_CHARS = 1500;
/** The window's start moves in steps of this many characters, so consecutive keystrokes share a prompt prefix. */
export const PREFIX_WINDOW_STEP = 512;

/**
 * The text before the cursor a completion uses: at least
 * COMPLETION_PREFIX_CHARS, starting at a multiple of PREFIX_WINDOW_STEP, so
 * that typing keeps the prompt's start in place and the backbone reuses the
 * cache of everything before the cursor's line.
 */
export function promptWindow(prefix: string): string {
  if (prefix.length <= COMPLETION_PREFIX_CHARS) return prefix;
  return prefix.slice(Math.floor((prefix.length - COMPLETION_PREFIX_CHARS) / PREFIX_WINDOW_STEP) * PREFIX_WINDOW_STEP);
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
    if (adapter) await bb.useAdapter(fs.readFileSync(adapter));
    else await bb.clearAdapter();
    this.activeAdapter = adapter;
  }

  /** A short continuation of `prefix` (stops at a blank line). */
  async complete(workspace: string | undefined, prefix: string, options: { fineTuned?: boolean; maxTokens?: number; signal?: AbortSignal } = {}): Promise<string> {
    const bb = await this.backbone();
    const adapter = options.fineTuned === false || !workspace ? undefined : await this.adapterFor(workspace);
    await this.use(bb, adapter);
    const g = await generate(bb, promptWindow(prefix), { maxTokens: options.maxTokens ?? 24, stop: ['\n\n'], signal: options.signal });
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
