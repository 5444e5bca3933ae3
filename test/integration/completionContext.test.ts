import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CompletionEngine } from '../../extension/core/completion/CompletionEngine';
import { WorkspaceIndex } from '../../extension/core/workspace/WorkspaceIndex';
import { Backbone } from '../../extension/core/model/Backbone';
import { tinyModel } from '../helpers/models';
import { tmpDir } from '../helpers/workspaces';

const BILLING = [
  '/** The invoice\'s total: every line\'s price times its quantity, less the discount. */',
  'export function computeInvoiceTotal(lines: InvoiceLine[], discount: number): number {',
  '  const gross = lines.reduce((sum, l) => sum + l.unitPrice * l.quantity, 0);',
  '  return gross * (1 - discount);',
  '}',
  '',
].join('\n');

describe('completions with context retrieved from other files (real llama.cpp, BM25 index on this computer)', function () {
  this.timeout(180_000);
  const model = tinyModel({ layers: 2, embd: 64, heads: 4, kvHeads: 2, seed: 12 });
  let ws: string;
  let store: string;
  let engine: CompletionEngine;
  before(() => {
    ws = tmpDir('context-ws');
    store = tmpDir('context-store');
    fs.mkdirSync(path.join(ws, 'src'));
    fs.writeFileSync(path.join(ws, 'src', 'billing.ts'), BILLING);
    for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(ws, 'src', `util${i}.ts`), Array.from({ length: 40 }, (_, k) => `export const value${i}_${k} = ${k};`).join('\n'));
    fs.writeFileSync(path.join(ws, '.env'), 'computeInvoiceTotal=secret-value\n');
    engine = new CompletionEngine(model, store);
  });
  after(() => engine.dispose());

  const prefix = 'import { computeInvoiceTotal } from "./billing";\n\nexport function checkout(cart: Cart): number {\n  const lines = cart.lines;\n  return compute';

  it('the prompt carries the definition of a symbol that only another file defines, with its path, and never an ignored or secret file', async () => {
    const early = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 1 });
    assert.equal(early.context, '', 'the first completion does not wait for the index');
    await engine.contextIndex(ws);
    const r = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 4 });
    assert.deepEqual(r.contextFiles, ['src/billing.ts']);
    assert.ok(r.context.startsWith('// Path: src/billing.ts\n'));
    assert.ok(r.context.includes('// export function computeInvoiceTotal(lines: InvoiceLine[], discount: number): number {'));
    assert.ok(!r.context.includes('secret-value'));
    const none = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 4, contextTokens: 0 });
    assert.equal(none.context, '');
    assert.ok(r.promptTokens > none.promptTokens, `${r.promptTokens} prompt tokens with the context, ${none.promptTokens} without`);
  });

  it('keystrokes on one line reuse the cache of the context: only the typed tokens are evaluated again', async () => {
    const first = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 2 });
    const typed = await engine.completion(ws, `${prefix}eI`, { file: 'src/checkout.ts', maxTokens: 2 });
    assert.equal(typed.context, first.context, 'the same context for the same line');
    process.stdout.write(`      prompt ${typed.promptTokens} tokens (context included), evaluated ${typed.promptTokensEvaluated} after two typed characters\n`);
    assert.ok(typed.promptTokensEvaluated <= 4, `evaluated ${typed.promptTokensEvaluated} of ${typed.promptTokens}`);
  });

  it('the editor\'s definitions go in the prompt before retrieved windows, filtered by the scan\'s rules, and keystrokes still reuse the cache', async () => {
    fs.writeFileSync(path.join(ws, 'src', 'cart.ts'), 'export interface Cart {\n  lines: InvoiceLine[];\n  customerId: string;\n}\n');
    await engine.fileChanged(ws, 'src/cart.ts', fs.readFileSync(path.join(ws, 'src', 'cart.ts'), 'utf8'));
    const editorSnippets = [
      { path: 'src/cart.ts', startLine: 0, text: 'export interface Cart {\n  lines: InvoiceLine[];\n  customerId: string;\n}\n', source: 'definition' as const },
      { path: '.env', startLine: 0, text: 'computeInvoiceTotal=secret-value\n', source: 'recent edit' as const },
    ];
    const r = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 2, editorSnippets });
    assert.deepEqual(r.contextSnippets.map((x) => `${x.source} ${x.path}`), ['definition src/cart.ts', 'retrieved src/billing.ts']);
    assert.ok(r.context.endsWith('// Path: src/cart.ts\n// export interface Cart {\n//   lines: InvoiceLine[];\n//   customerId: string;\n// }\n'), 'nearest the cursor');
    assert.ok(!r.context.includes('secret-value'), 'a secret file the editor offered is left out');
    const typed = await engine.completion(ws, `${prefix}eI`, { file: 'src/checkout.ts', maxTokens: 2, editorSnippets });
    assert.ok(typed.promptTokensEvaluated <= 4, `evaluated ${typed.promptTokensEvaluated} of ${typed.promptTokens}`);
    fs.rmSync(path.join(ws, 'src', 'cart.ts'));
    await engine.fileChanged(ws, 'src/cart.ts', undefined);
  });

  it('the context fits its token budget under the model\'s own tokenizer, and follows a save, a rename and a deletion', async () => {
    const bb = await Backbone.open(model, { contextSize: 256, maxSequences: 1, threads: 1 });
    try {
      for (const budget of [16, 48, 200]) {
        const r = await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 1, contextTokens: budget });
        const n = bb.tokenize(r.context, false).length;
        assert.ok(n <= budget, `budget ${budget}: ${n} tokens`);
      }
    } finally {
      bb.dispose();
    }
    fs.renameSync(path.join(ws, 'src', 'billing.ts'), path.join(ws, 'src', 'invoices.ts'));
    await engine.fileChanged(ws, 'src/invoices.ts', BILLING, 'src/billing.ts');
    assert.deepEqual((await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 1 })).contextFiles, ['src/invoices.ts']);
    await engine.fileChanged(ws, 'src/invoices.ts', undefined);
    assert.ok(!(await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 1 })).context.includes('computeInvoiceTotal'));
    await engine.fileChanged(ws, '.env', 'computeInvoiceTotal=secret-value\n');
    assert.ok(!(await engine.completion(ws, prefix, { file: 'src/checkout.ts', maxTokens: 1 })).context.includes('secret-value'), 'a secret file saved is not indexed');
    await engine.dispose();
    assert.ok(fs.existsSync(WorkspaceIndex.fileFor(store, ws)), 'the index is kept in the device store');
  });
});
