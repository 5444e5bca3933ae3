import * as assert from 'node:assert/strict';
import { completionEnd, cursorIndent } from '../../../../../extension/core/completion/completionStops';

describe('where a completion ends', () => {
  it('at a closing bracket that belongs to the code around the cursor', () => {
    assert.equal(completionEnd('a + b)', 0), 5);
    assert.equal(completionEnd('f(x) + g(y)', 0), undefined, 'balanced brackets go on');
    assert.equal(completionEnd('[1, 2]]', 0), 6);
  });

  it('before a later line indented less than the cursor\'s line, not before blank or deeper lines', () => {
    const text = 'x = 1;\n    y = 2;\n\n    if (y) {\n      z();\n    }\n  }\nnext();';
    assert.equal(completionEnd(text, 4), text.indexOf('\n  }'));
    assert.equal(completionEnd('x = 1;\n', 4), undefined, 'a line not yet started is not judged');
    assert.equal(completionEnd('x = 1;\n  ', 4), undefined, 'nor one that is only indentation so far');
  });

  it('reads the cursor line\'s indentation', () => {
    assert.equal(cursorIndent('function f() {\n    return '), 4);
    assert.equal(cursorIndent('\t\tx'), 2);
    assert.equal(cursorIndent('top'), 0);
  });
});
