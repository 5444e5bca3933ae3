import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { auditSentence, confirmPrivacyLine, serverPlace, wireStatement } from '../../../../../extension/core/text/privacyText';
import { PRIVACY_AUDIT } from '../../../../../extension/core/text/privacyAudit';

const DEFAULT = { bits: 8, skipLayers: 0 };

const ROOT = path.resolve(__dirname, '..', '..', '..', '..', '..', '..');

function productFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...productFiles(rel));
    else if (/\.(ts|cpp|hpp)$/.test(e.name)) out.push(rel);
  }
  return out;
}

describe('What the product says about privacy', () => {
  it('with a team server: the dialog and the dashboard say the server receives the code as token ids that anyone can read', () => {
    for (const text of [confirmPrivacyLine('team', DEFAULT), wireStatement('team', DEFAULT)]) {
      assert.match(text, /token ids|id of the next token/);
      assert.match(text, /your code itself/);
      assert.match(text, /public tokenizer/);
      assert.match(text, /activations|hidden states/);
    }
  });

  it('with the embedded server: nothing is sent over the network, and the dashboard says what a team server would get', () => {
    assert.match(confirmPrivacyLine('embedded', DEFAULT), /nothing is sent over the network/);
    assert.match(wireStatement('embedded', DEFAULT), /Nothing left this computer/);
    assert.match(wireStatement('embedded', DEFAULT), /token ids/);
  });

  it('label-private with a team server: no token id is sent as such; activations and gradients are, and can give much of the code and the ids away', () => {
    for (const text of [confirmPrivacyLine('team-label-private', DEFAULT), wireStatement('team-label-private', DEFAULT)]) {
      assert.match(text, /token ids are not sent as such/);
      assert.match(text, /read the next-token ids back from the gradients/);
      assert.match(text, /activations/);
      assert.match(text, /gradients/);
      assert.match(text, /recover much of the code/);
      assert.match(text, /early layers/);
      assert.doesNotMatch(text, /your code itself/);
    }
    assert.equal(serverPlace(undefined, true), 'embedded');
    assert.equal(serverPlace('ws://h:1', true), 'team-label-private');
    assert.equal(serverPlace('ws://h:1', false), 'team');
  });

  it('states the audit\'s measured share for the configuration in use, never a smaller one than audited', () => {
    const row = (bits: number, skipLayers: number) => PRIVACY_AUDIT.labelPrivate.find((r) => r.activationBits === bits && r.skipLayers === skipLayers)!;
    assert.ok(row(8, 0) && row(4, 0), 'the audit covers 8 and 4 bits with every layer sent');
    const percent = (r: { recovered: number }) => `about ${Math.round(100 * r.recovered)}%`;
    assert.ok(confirmPrivacyLine('team-label-private', DEFAULT).includes(percent(row(8, 0))));
    assert.ok(wireStatement('team-label-private', { bits: 4, skipLayers: 0 }).includes(percent(row(4, 0))));
    // Skipping 3 layers quotes the audited configuration with the most skipped layers up to 3 (2), not a better one.
    assert.ok(auditSentence('team-label-private', { bits: 8, skipLayers: 3 }).includes(percent(row(8, 2))));
    assert.match(confirmPrivacyLine('team', DEFAULT), /100% of the training tokens/);
    assert.equal(auditSentence('embedded', DEFAULT), '');
  });

  it('no product text or setting claims the content stays on the laptop', () => {
    const claims = /never leave|stay on this computer|files stay|data never leaves/i;
    const offenders = [...productFiles('extension'), ...productFiles('webview'), ...productFiles('server'), 'package.json']
      .filter((f) => claims.test(fs.readFileSync(path.join(ROOT, f), 'utf8').replace(/never leaves the process/g, '')));
    assert.deepEqual(offenders, []);
  });
});
