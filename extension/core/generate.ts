import { Backbone } from './Backbone';
import { MobiError } from './MobiError';
import { SeededRandom } from '../../common/SeededRandom';
import { WholeCharacters } from './WholeCharacters';

/** Options of text generation. */
export interface GenerateOptions {
  /** Most new tokens. Default 64. */
  maxTokens?: number;
  /** 0 = greedy (default); otherwise softmax temperature. */
  temperature?: number;
  /** Nucleus sampling mass (with temperature > 0). Default 1. */
  topP?: number;
  /** Sampling seed. Default 1. */
  seed?: number;
  /** Stop before any of these strings. */
  stop?: string[];
  /** Cancels the generation, the prompt's forward pass included (within one decode chunk). */
  signal?: AbortSignal;
  /** Reuse the context's cache of a previous prompt's common prefix. Default true. */
  reusePrompt?: boolean;
  /** Each new piece of text as it is produced. */
  onText?: (text: string) => void;
}

export interface Generation {
  text: string;
  tokens: number[];
  stoppedBy: 'eos' | 'stop' | 'budget' | 'cancelled';
  promptTokens: number;
  /** Prompt tokens the backbone actually ran (the rest came from the cache of the previous prompt). */
  promptTokensEvaluated: number;
  promptSeconds: number;
  generateSeconds: number;
}

function pick(logits: Float32Array, temperature: number, topP: number, rng: SeededRandom): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  if (temperature <= 0) return best;
  const max = logits[best]!;
  const probs = Array.from(logits, (l, i) => ({ i, p: Math.exp((l - max) / temperature) }));
  const total = probs.reduce((a, x) => a + x.p, 0);
  probs.sort((a, b) => b.p - a.p);
  let mass = 0;
  const kept: typeof probs = [];
  for (const x of probs) {
    kept.push(x);
    mass += x.p / total;
    if (mass >= topP) break;
  }
  const keptTotal = kept.reduce((a, x) => a + x.p, 0);
  let u = rng.next() * keptTotal;
  for (const x of kept) {
    u -= x.p;
    if (u <= 0) return x.i;
  }
  return kept[kept.length - 1]!.i;
}

/**
 * Generates a continuation of `prompt` with the backbone (and its side network,
 * when an adapter is in use): one forward pass over the prompt, then one per
 * new token. Long prompts keep their end.
 */
export async function generate(bb: Backbone, prompt: string, options: GenerateOptions = {}): Promise<Generation> {
  const maxTokens = options.maxTokens ?? 64;
  const stop = options.stop ?? [];
  const rng = new SeededRandom(options.seed ?? 1);
  let tokens = bb.tokenize(prompt);
  if (tokens.length === 0) throw new MobiError('EMPTY_INPUT', 'The prompt is empty.');
  const room = bb.contextSize - maxTokens;
  if (room < 1) throw new MobiError('CONTEXT_OVERFLOW', `maxTokens (${maxTokens}) must be smaller than the context (${bb.contextSize}).`);
  if (tokens.length > room) tokens = tokens.slice(tokens.length - room);
  const eos = new Set([bb.nativeInfo.eos]);
  const chars = new WholeCharacters();
  const out: number[] = [];
  let text = '';
  const t0 = process.hrtime.bigint();
  const reused = options.reusePrompt === false ? 0 : bb.reusablePrefix(tokens);
  let logits: Float32Array;
  try {
    logits = await bb.logitsAfter(tokens.subarray(reused), reused, options.signal);
  } catch (err) {
    if (MobiError.is(err, 'CANCELLED')) {
      return { text: '', tokens: [], stoppedBy: 'cancelled', promptTokens: tokens.length, promptTokensEvaluated: 0, promptSeconds: Number(process.hrtime.bigint() - t0) / 1e9, generateSeconds: 0 };
    }
    throw err;
  }
  const t1 = process.hrtime.bigint();
  let pos = tokens.length;
  let stoppedBy: Generation['stoppedBy'] = 'budget';
  while (out.length < maxTokens) {
    if (options.signal?.aborted) {
      stoppedBy = 'cancelled';
      break;
    }
    const next = pick(logits, options.temperature ?? 0, options.topP ?? 1, rng);
    if (eos.has(next)) {
      stoppedBy = 'eos';
      break;
    }
    out.push(next);
    const piece = chars.push(bb.tokenBytes(next));
    text += piece;
    const hit = stop.map((s) => text.indexOf(s)).filter((i) => i >= 0);
    if (hit.length > 0) {
      text = text.slice(0, Math.min(...hit));
      stoppedBy = 'stop';
      break;
    }
    if (piece) options.onText?.(piece);
    if (out.length === maxTokens) break;
    try {
      logits = await bb.logitsAfter(Int32Array.of(next), pos, options.signal);
    } catch (err) {
      if (!MobiError.is(err, 'CANCELLED')) throw err;
      stoppedBy = 'cancelled';
      break;
    }
    pos += 1;
  }
  chars.end(); // an incomplete last character is dropped, never shown as U+FFFD
  const t2 = process.hrtime.bigint();
  return { text, tokens: out, stoppedBy, promptTokens: tokens.length, promptTokensEvaluated: tokens.length - reused, promptSeconds: Number(t1 - t0) / 1e9, generateSeconds: Number(t2 - t1) / 1e9 };
}
