import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { contextQuery, EditorSnippet, formatSnippet, lineCommentFor, retrievedContext, trainingContext } from '../../../../../extension/core/completion/retrievedContext';
import { WorkspaceIndex } from '../../../../../extension/core/workspace/WorkspaceIndex';
import { codeTerms } from '../../../../../extension/core/workspace/codeTerms';
import { WorkspaceRules } from '../../../../../extension/core/workspace/WorkspaceRules';
import { scanWorkspace } from '../../../../../extension/core/workspace/scanWorkspace';
import { tmpDir } from '../../../../helpers/workspaces';

function write(root: string, rel: string, text: string | Buffer): void {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  fs.writeFileSync(path.join(root, rel), text);
}

const INVOICE = 'export function computeInvoiceTotal(lines: Line[]): number {\n  return lines.reduce((sum, l) => sum + l.price * l.quantity, 0);\n}\n';
const filler = (name: string): string => Array.from({ length: 30 }, (_, i) => `export const ${name}${i} = ${i} * 2;`).join('\n');

describe('workspace index for completions\' context (BM25 on this computer)', () => {
  it('splits identifiers into the terms BM25 scores: whole, and camelCase or snake_case parts; keywords left out', () => {
    assert.deepEqual(codeTerms('const computeInvoiceTotal = max_line_count;'), ['computeinvoicetotal', 'compute', 'invoice', 'total', 'max_line_count', 'max', 'line', 'count']);
  });

  it('follows edits, deletions and renames, and keeps them in the device store across openings', async () => {
    const ws = tmpDir('index-ws');
    const store = tmpDir('index-store');
    write(ws, 'src/invoice.ts', INVOICE);
    write(ws, 'src/other.ts', filler('other'));
    write(ws, 'src/main.ts', 'import { computeInvoiceTotal } from "./invoice";\n');
    const index = await WorkspaceIndex.open(ws, store);
    assert.equal(index.fileCount, 3);
    assert.deepEqual(index.find('computeInvoiceTotal(lines)', 5, 'src/main.ts').map((s) => s.path), ['src/invoice.ts'], 'the file being completed is never its own context');
    // An edit moves the function to another file.
    index.setFile('src/invoice.ts', filler('invoice'));
    index.setFile('src/other.ts', `${filler('other')}\n${INVOICE}`);
    assert.deepEqual(index.find('computeInvoiceTotal', 5, 'src/main.ts').map((s) => s.path), ['src/other.ts']);
    assert.ok(index.find('computeInvoiceTotal', 5, 'src/main.ts')[0]!.text.includes('lines.reduce'), 'the snippet is the file as saved');
    // A rename, then a deletion.
    index.removeFile('src/other.ts'); // renamed, as CompletionEngine.fileChanged passes it on
    index.setFile('src/billing.ts', `${filler('other')}\n${INVOICE}`);
    assert.deepEqual(index.find('computeInvoiceTotal', 5, 'src/main.ts').map((s) => s.path), ['src/billing.ts']);
    assert.ok(!index.has('src/other.ts'));
    index.removeFile('src/billing.ts');
    assert.deepEqual(index.find('computeInvoiceTotal', 5, 'src/main.ts'), []);
    index.setFile('src/billing.ts', INVOICE);
    await index.save();
    assert.ok(fs.existsSync(WorkspaceIndex.fileFor(store, ws)), 'kept in the device store');
    // Opened again: the stored index, brought up to date with the disk (billing.ts was never written there; invoice.ts changed on disk).
    fs.writeFileSync(path.join(ws, 'src/invoice.ts'), `${INVOICE}// changed on disk\n`);
    const again = await WorkspaceIndex.open(ws, store);
    assert.ok(!again.has('src/billing.ts'), 'a file gone from the disk leaves the index when it is opened');
    assert.deepEqual(again.find('computeInvoiceTotal', 5, 'src/main.ts').map((s) => s.path), ['src/invoice.ts']);
    // A damaged stored index is built again from the scan.
    await again.save();
    const stored = WorkspaceIndex.fileFor(store, ws);
    fs.writeFileSync(stored, fs.readFileSync(stored, 'utf8').replace(/"sha256"/, '"sha2'));
    const rebuilt = await WorkspaceIndex.open(ws, store);
    assert.deepEqual(rebuilt.find('computeInvoiceTotal', 5, 'src/main.ts').map((s) => s.path), ['src/invoice.ts']);
  });

  it('never indexes what the fine-tune would not learn from: ignored, secret, lock, binary, minified, excluded folders, links', async () => {
    const ws = tmpDir('index-rules');
    const secret = 'const computeInvoiceTotal = "sk-live-0000";\n';
    write(ws, '.gitignore', 'generated/\n*.local.ts\n');
    write(ws, 'generated/invoice.ts', secret);
    write(ws, 'src/invoice.local.ts', secret);
    write(ws, 'sub/.gitignore', 'private.ts\n');
    write(ws, 'sub/private.ts', secret);
    write(ws, '.env', secret);
    write(ws, 'secrets.json', secret);
    write(ws, 'yarn.lock', secret);
    write(ws, 'node_modules/pkg/index.ts', secret);
    write(ws, 'bin/blob.ts', Buffer.concat([Buffer.from(secret), Buffer.from([0, 1, 2])]));
    write(ws, 'src/app.min.js', 'var computeInvoiceTotal=1;'.repeat(200));
    write(ws, 'src/ok.ts', filler('ok'));
    fs.symlinkSync(path.join(ws, '.env'), path.join(ws, 'src/link.ts'));
    const index = await WorkspaceIndex.open(ws, tmpDir('rules-store'));
    assert.deepEqual(index.find('computeInvoiceTotal', 10), [], 'none of them at opening');
    // Saved later (the same paths through setFile, as VS Code's save events give them).
    for (const rel of ['generated/invoice.ts', 'src/invoice.local.ts', 'sub/private.ts', '.env', 'secrets.json', 'yarn.lock', 'node_modules/pkg/index.ts', '../outside.ts', 'src/../.env']) {
      assert.equal(index.setFile(rel, secret), false, rel);
    }
    assert.equal(index.setFile('bin/blob.ts', `${secret}\0`), false, 'binary');
    assert.deepEqual(index.find('computeInvoiceTotal', 10), []);
    const context = retrievedContext(index, 'src/main.ts', `${INVOICE}\nconst t = `, 1000, (t) => t.length);
    assert.ok(!context.text.includes('sk-live'), 'nothing of them in a prompt');
    // The rules agree with the scan's, file by file.
    const rules = new WorkspaceRules(ws);
    const scanned = new Set(scanWorkspace(ws).files.map((f) => f.path));
    for (const rel of ['generated/invoice.ts', 'src/invoice.local.ts', 'sub/private.ts', '.env', 'secrets.json', 'yarn.lock', 'node_modules/pkg/index.ts']) {
      assert.notEqual(rules.skipReason(rel), undefined, rel);
      assert.ok(!scanned.has(rel));
    }
    assert.equal(rules.skipReason('src/ok.ts'), undefined);
    // A .gitignore saved with a new rule: files it now leaves out leave the index.
    assert.ok(index.has('src/ok.ts'));
    fs.appendFileSync(path.join(ws, '.gitignore'), 'src/ok.ts\n');
    index.rulesChanged();
    assert.ok(!index.has('src/ok.ts'));
  });

  it('the context stays within its token budget, names each snippet\'s file in the language\'s comment, and is the same for every keystroke on a line', async () => {
    const ws = tmpDir('index-budget');
    for (let i = 0; i < 6; i++) write(ws, `src/m${i}.ts`, `${filler(`m${i}`)}\n${INVOICE.replace('computeInvoiceTotal', `computeInvoiceTotal${i}`)}`);
    write(ws, 'tool.py', 'def compute_invoice_total(lines):\n    return sum(l.price for l in lines)\n');
    const index = await WorkspaceIndex.open(ws, tmpDir('budget-store'));
    const prefix = 'const lines = load();\nconst total = computeInvoiceTotal3(lines);\nconst t';
    const count = (t: string): number => t.split(/\s+/).filter(Boolean).length;
    for (const budget of [0, 10, 40, 100, 400]) {
      const c = retrievedContext(index, 'src/main.ts', prefix, budget, count);
      assert.ok(c.tokens <= budget && count(c.text) === c.tokens, `budget ${budget}: ${c.tokens} tokens`);
      if (budget >= 100) assert.ok(c.snippets.length > 0);
    }
    const c = retrievedContext(index, 'src/main.ts', prefix, 400, count);
    assert.match(c.text, /^\/\/ Path: src\/m\d\.ts\n/);
    assert.ok(c.text.split('\n').filter(Boolean).every((l) => l.startsWith('//')), 'every line a comment');
    assert.equal(lineCommentFor('a/b.py'), '#');
    assert.match(formatSnippet({ path: 'tool.py', startLine: 0, text: 'x = 1\n', score: 1 }, '#'), /^# Path: tool\.py\n# x = 1\n$/);
    assert.equal(contextQuery(`${prefix}ot`), contextQuery(prefix), 'the line being typed is not in the query');
    const long = Array.from({ length: 40 }, (_, i) => `const line${i} = ${i};`);
    const at = (line: number): string => `${long.slice(0, line).join('\n')}\n`;
    assert.equal(contextQuery(at(17)), contextQuery(at(23)), 'the same query for the lines of one step');
    assert.notEqual(contextQuery(at(23)), contextQuery(at(24)), 'and a new one at the next step');
    assert.ok(!contextQuery(at(23)).includes('line16 '), 'the lines from the step\'s start on are not in it');
    assert.equal(retrievedContext(index, 'src/main.ts', `${prefix}ota`, 400, count).text, c.text);
  });

  it('the editor\'s snippets (definitions, recent edits) come first and nearest the cursor, within the budget, from files the index holds only', async () => {
    const ws = tmpDir('index-editor');
    write(ws, '.gitignore', 'generated/\n');
    write(ws, 'src/invoice.ts', `${filler('a')}\n${INVOICE}`);
    write(ws, 'src/shapes.ts', 'export interface Line {\n  price: number;\n  quantity: number;\n}\n');
    write(ws, 'src/recent.ts', filler('recent'));
    write(ws, 'generated/invoice.ts', 'export const leaked = "from an ignored file";\n');
    write(ws, '.env', 'TOKEN=sk-live-0000\n');
    const index = await WorkspaceIndex.open(ws, tmpDir('editor-store'));
    const editor: EditorSnippet[] = [
      { path: 'src/shapes.ts', startLine: 0, text: 'export interface Line {\n  price: number;\n  quantity: number;\n}\n', source: 'definition' },
      { path: 'generated/invoice.ts', startLine: 0, text: 'export const leaked = "from an ignored file";\n', source: 'definition' },
      { path: '.env', startLine: 0, text: 'TOKEN=sk-live-0000\n', source: 'recent edit' },
      { path: 'src/main.ts', startLine: 0, text: 'the file being completed\n', source: 'recent edit' },
      { path: 'src/recent.ts', startLine: 3, text: 'export const recent3 = 3 * 2;\n', source: 'recent edit' },
      { path: 'src/invoice.ts', startLine: 30, text: INVOICE, source: 'definition' },
    ];
    const prefix = 'const lines: Line[] = load();\nconst total = computeInvoiceTotal(lines);\nconst t';
    const count = (t: string): number => t.split(/\s+/).filter(Boolean).length;
    const c = retrievedContext(index, 'src/main.ts', prefix, 1000, count, editor);
    assert.deepEqual(c.snippets.map((x) => `${x.source} ${x.path}:${x.startLine}`).slice(0, 3), ['definition src/shapes.ts:0', 'recent edit src/recent.ts:3', 'definition src/invoice.ts:30']);
    assert.ok(!c.text.includes('leaked') && !c.text.includes('sk-live') && !c.text.includes('the file being completed'), 'ignored, secret and the completed file left out');
    assert.ok(!c.snippets.some((x) => x.source === 'retrieved' && x.path === 'src/invoice.ts' && x.startLine + 24 > 30), 'a retrieved window overlapping a definition is not added again');
    assert.ok(c.text.endsWith('// Path: src/shapes.ts\n// export interface Line {\n//   price: number;\n//   quantity: number;\n// }\n'), 'the first taken is nearest the cursor');
    for (const budget of [5, 12, 30]) {
      const b = retrievedContext(index, 'src/main.ts', prefix, budget, count, editor);
      assert.ok(b.tokens <= budget && count(b.text) === b.tokens, `budget ${budget}: ${b.tokens}`);
    }
    assert.deepEqual(retrievedContext(index, 'src/main.ts', prefix, 20, count, editor).snippets.map((x) => x.path), ['src/shapes.ts'], 'the budget goes to the editor\'s snippets first');
  });

  it('a training sequence\'s context is the best window cut to the first lines that fit when no window fits whole', async () => {
    const ws = tmpDir('index-training');
    write(ws, 'src/invoice.ts', `${INVOICE}${filler('inv')}\n`);
    write(ws, 'src/other.ts', filler('other'));
    const index = await WorkspaceIndex.open(ws, tmpDir('training-store'));
    const count = (t: string): number => t.split(/\s+/).filter(Boolean).length;
    const query = 'const total = computeInvoiceTotal(lines);\nconst again = computeInvoiceTotal(more);\n';
    for (const budget of [0, 5, 13, 40, 1000]) {
      const text = trainingContext(index, 'src/main.ts', query, budget, count);
      assert.ok(count(text) <= budget, `budget ${budget}: ${count(text)}`);
      if (budget === 0 || budget === 5) assert.equal(text, '', 'not even the path line and a first line fit');
      else assert.ok(text.startsWith('// Path: src/invoice.ts\n// export function computeInvoiceTotal('), text);
      if (budget === 40) {
        const lines = text.trimEnd().split('\n').length - 1;
        const oneMore = formatSnippet({ path: 'src/invoice.ts', startLine: 0, text: `${INVOICE}${filler('inv')}`.split('\n').slice(0, lines + 1).join('\n'), score: 0 }, '//');
        assert.ok(count(oneMore) > 40, 'the most first lines that fit');
      }
    }
  });
});
