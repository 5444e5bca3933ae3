import * as assert from 'node:assert/strict';
import { actionsFor } from '../../../../../extension/core/text/errorActions';
import type { JobProgress } from '../../../../../extension/core/job/FineTuneJob';
import { formatDuration, statusText } from '../../../../../extension/core/text/statusText';

const p = (over: Partial<JobProgress>): JobProgress => ({ phase: 'training', step: 0, totalSteps: 10, sequencesDone: 0, tokensDone: 0, deviceTokensPerSecond: 0, bytesSent: 0, deviceRssBytes: 0, lossHistory: [], ...over });

describe('status bar text', () => {
  it('shows state, step/total, loss and ETA while training, with a spinner', () => {
    const t = statusText(p({ step: 4, totalSteps: 20, trainLoss: 3.14159, etaSeconds: 75 })).text;
    assert.equal(t, '$(sync~spin) MobiLLM 4/20 · loss 3.14 · ETA 1m 15s');
  });
  it('shows the phase before training, the result when done, and failures', () => {
    assert.equal(statusText(p({ phase: 'uploading-head' })).text, '$(sync~spin) MobiLLM: uploading head');
    assert.equal(statusText(p({ phase: 'done', heldOutLossBefore: Math.log(100), heldOutLossAfter: Math.log(25) })).text, '$(check) MobiLLM: done, perplexity 100.0 → 25.0');
    assert.match(statusText(p({ phase: 'failed' })).text, /failed/);
    assert.match(statusText(p({ phase: 'cancelled' })).tooltip, /Resume/);
    assert.equal(statusText(undefined).text, '$(sparkle) MobiLLM');
  });
  it('formats durations', () => {
    assert.equal(formatDuration(5.4), '5s');
    assert.equal(formatDuration(3725), '1h 2m');
  });
});

describe('error toast actions', () => {
  it('are chosen by error code', () => {
    assert.deepEqual(actionsFor('UNAUTHORIZED'), ['Set Token', 'Open Settings', 'Show Logs']);
    assert.deepEqual(actionsFor('SERVER_UNREACHABLE'), ['Open Settings', 'Show Logs', 'Retry']);
    assert.deepEqual(actionsFor('CANCELLED'), []);
    assert.ok(actionsFor('DECODE_FAILED').includes('Show Logs'));
  });
});
