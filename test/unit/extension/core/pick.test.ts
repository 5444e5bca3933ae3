import * as assert from 'node:assert/strict';
import { SeededRandom } from '../../../../common/SeededRandom';
import { pick } from '../../../../extension/core/completion/generate';

/** The plain definition: sort the whole vocabulary, keep the nucleus, sample. */
function nucleusSet(logits: Float32Array, temperature: number, topP: number): Set<number> {
  const max = Math.max(...logits);
  const w = Array.from(logits, (l, i) => ({ i, p: Math.exp((l - max) / temperature) }));
  const total = w.reduce((a, x) => a + x.p, 0);
  w.sort((a, b) => b.p - a.p || a.i - b.i);
  const out = new Set<number>();
  let mass = 0;
  for (const x of w) {
    out.add(x.i);
    mass += x.p / total;
    if (mass >= topP) break;
  }
  return out;
}

describe('sampling the next token', () => {
  it('greedy is the arg-max; top-p samples only inside the nucleus, peaked or flat', () => {
    const rng = new SeededRandom(5);
    for (const spread of [30, 1, 0.01]) {
      const logits = Float32Array.from({ length: 5000 }, () => rng.normal() * spread);
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
      assert.equal(pick(logits, 0, 1, rng), best);
      const nucleus = nucleusSet(logits, 0.7, 0.9);
      const seen = new Set<number>();
      for (let k = 0; k < 300; k++) {
        const t = pick(logits, 0.7, 0.9, rng);
        assert.ok(nucleus.has(t), `spread ${spread}: token ${t} outside the nucleus of ${nucleus.size}`);
        seen.add(t);
      }
      if (nucleus.size > 3) assert.ok(seen.size > 1, 'it samples, not always the same token');
      const any = pick(logits, 1, 1, rng);
      assert.ok(any >= 0 && any < logits.length);
    }
  });
});
