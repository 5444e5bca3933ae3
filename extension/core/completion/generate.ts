import { Backbone } from '../model/Backbone';
import { MobiError } from '../MobiError';
import { SeededRandom } from '../../../common/SeededRandom';
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
  /** Called with the text so far; an index stops the generation there (the text is cut at it). */
  endAt?: (text: string) => number | undefined;
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
  /** The prompt's token ids as run (after trimming to the context). */
  prompt: Int32Array;
  /** Prompt tokens the backbone actually ran (the rest came from the cache of the previous prompt). */
  promptTokensEvaluated: number;
  promptSeconds: number;
  generateSeconds: number;
}

/**
 * The next token: the arg-max at temperature 0; otherwise a sample from the
 * softmax at `temperature`, restricted to the smallest set of most likely
 * tokens whose mass reaches `topP`. Only the candidates that can be in that
 * set are sorted (those within a factor 1e-9 of the most likely token, when
 * they already hold the mass), not the whole vocabulary.
 */
export function pick(logits: Float32Array, temperature: number, topP: number, rng: SeededRandom): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  if (temperature <= 0) return best;
  const max = logits[best]!;
  const weights = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += weights[i] = Math.exp((logits[i]! - max) / temperature);
  if (topP >= 1) return sampleFrom(weights, total, rng);
  const cutoff = 1e-9;
  let candidates: number[] = [];
  let candidateMass = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i]! >= cutoff) {
      candidates.push(i);
      candidateMass += weights[i]!;
    }
  }
  if (candidateMass / total < topP) candidates = Array.from(weights.keys()); // flat: the nucleus may reach below the cutoff
  candidates.sort((x, y) => weights[y]! - weights[x]! || x - y);
  let mass = 0;
  let kept = 0;
  while (kept < candidates.length) {
    mass += weights[candidates[kept]!]!;
    kept++;
    if (mass / total >= topP) break;
  }
  let u = rng.next() * mass;
  for (let k = 0; k < kept; k++) {
    u -= weights[candidates[k]!]!;
    if (u <= 0) return candidates[k]!;
  }
  return candidates[kept - 1]!;
}

function sampleFrom(weights: Float64Array, total: number, rng: SeededRandom): number {
  let u = rng.next() * total;
  for (let i = 0; i < weights.length; i++) {
    u -= weights[i]!;
    if (u <= 0) return i;
  }
  return weights.length - 1;
}

/**
 * Generates a continuation of `prompt` with the backbone (and its side network,
 * when an adapter is in use): one forward pass over the prompt, then one per
 * new token. Long prompts keep their end.
 */
export async function generate(bb: Backbone, prompt: string | Int32Array, options: GenerateOptions = {}): Promise<Generation> {
  const maxTokens = options.maxTokens ?? 64;
  const stop = options.stop ?? [];
  const rng = new SeededRandom(options.seed ?? 1);
  let tokens = typeof prompt === 'string' ? bb.tokenize(prompt) : prompt;
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
      return { text: '', tokens: [], stoppedBy: 'cancelled', promptTokens: tokens.length, prompt: tokens, promptTokensEvaluated: 0, promptSeconds: Number(process.hrtime.bigint() - t0) / 1e9, generateSeconds: 0 };
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
    const end = options.endAt?.(text);
    const hit = [...stop.map((s) => text.indexOf(s)), end ?? -1].filter((i) => i >= 0);
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
  return { text, tokens: out, stoppedBy, promptTokens: tokens.length, prompt: tokens, promptTokensEvaluated: tokens.length - reused, promptSeconds: Number(t1 - t0) / 1e9, generateSeconds: Number(t2 - t1) / 1e9 };
}
