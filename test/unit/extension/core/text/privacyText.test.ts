import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { confirmPrivacyLine, serverPlace, wireStatement } from '../../../../../extension/core/text/privacyText';

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
    for (const text of [confirmPrivacyLine('team'), wireStatement('team')]) {
      assert.match(text, /token ids|id of the next token/);
      assert.match(text, /your code itself/);
      assert.match(text, /public tokenizer/);
      assert.match(text, /activations|hidden states/);
    }
  });

  it('with the embedded server: nothing is sent over the network, and the dashboard says what a team server would get', () => {
    assert.match(confirmPrivacyLine('embedded'), /nothing is sent over the network/);
    assert.match(wireStatement('embedded'), /Nothing left this computer/);
    assert.match(wireStatement('embedded'), /token ids/);
  });

  it('label-private with a team server: no token id leaves; activations and gradients do, and can give some of the code away', () => {
    for (const text of [confirmPrivacyLine('team-label-private'), wireStatement('team-label-private')]) {
      assert.match(text, /no token id leaves this computer/);
      assert.match(text, /activations/);
      assert.match(text, /gradients/);
      assert.match(text, /recover some of the code/);
      assert.match(text, /early layers/);
      assert.doesNotMatch(text, /your code itself/);
    }
    assert.equal(serverPlace(undefined, true), 'embedded');
    assert.equal(serverPlace('ws://h:1', true), 'team-label-private');
    assert.equal(serverPlace('ws://h:1', false), 'team');
  });

  it('no product text or setting claims the content stays on the laptop', () => {
    const claims = /never leave|stay on this computer|files stay|data never leaves/i;
    const offenders = [...productFiles('extension'), ...productFiles('webview'), ...productFiles('server'), 'package.json']
      .filter((f) => claims.test(fs.readFileSync(path.join(ROOT, f), 'utf8').replace(/never leaves the process/g, '')));
    assert.deepEqual(offenders, []);
  });
});
