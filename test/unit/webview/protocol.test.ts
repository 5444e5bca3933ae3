import * as assert from 'node:assert/strict';
import { DashboardState, parseHostMessage, parseWebviewMessage } from '../../../webview/protocol';

const state: DashboardState = {
  phase: 'training', step: 3, totalSteps: 10, trainLoss: 5.1, deviceTokensPerSecond: 900, bytesSent: 1024, deviceRssBytes: 2e8,
  lossHistory: [[1, 6], [2, 5.5]], config: { bits: '8' }, wire: 'statement',
};

describe('dashboard messages', () => {
  it('accepts a valid state and the three webview messages', () => {
    assert.deepEqual(parseHostMessage({ type: 'state', state }), { type: 'state', state });
    for (const type of ['ready', 'cancel', 'showLogs']) assert.deepEqual(parseWebviewMessage({ type }), { type });
    const withComparison = { ...state, comparison: { basePerplexity: 30, tunedPerplexity: 12, samples: [{ prompt: 'a', base: 'b', tuned: 'c' }] } };
    assert.ok(parseHostMessage({ type: 'state', state: withComparison }));
  });

  it('rejects anything else', () => {
    const bad: unknown[] = [
      null, 'state', { type: 'state' }, { type: 'state', state: { ...state, step: 'three' } },
      { type: 'state', state: { ...state, lossHistory: [[1]] } }, { type: 'state', state: { ...state, trainLoss: NaN } },
      { type: 'state', state: { ...state, config: { bits: 8 } } }, { type: 'state', state: { ...state, comparison: { basePerplexity: 1 } } },
      { type: 'other', state },
    ];
    for (const b of bad) assert.equal(parseHostMessage(b), undefined, JSON.stringify(b));
    for (const b of [null, {}, { type: 'run' }, { type: 'cancel ' }, 'cancel']) assert.equal(parseWebviewMessage(b), undefined);
  });
});
