/** Identifiers of most languages (letters, digits, `_` and `$`, not starting with a digit). */
export const IDENTIFIERS = /[A-Za-z_$][A-Za-z0-9_$]*/g;

/** Words that say nothing of what code is about (BM25's IDF would weigh them little; dropping them keeps windows short). */
export const STOP_WORDS: ReadonlySet<string> = new Set([
  'const', 'let', 'var', 'function', 'return', 'if', 'else', 'for', 'while', 'do', 'new', 'this', 'import', 'export', 'from', 'default', 'class',
  'extends', 'true', 'false', 'null', 'undefined', 'void', 'async', 'await', 'of', 'in', 'is', 'as', 'the', 'to', 'and', 'or', 'def', 'self', 'int',
  'string', 'number', 'boolean', 'public', 'private', 'static', 'type', 'interface', 'readonly', 'break', 'continue', 'case', 'switch',
]);

/**
 * The terms of code for BM25: each identifier (lower case) and, for
 * camelCase or snake_case ones, its parts (`computeInvoiceTotal`: itself,
 * `compute`, `invoice`, `total`), keywords left out.
 */
export function codeTerms(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(IDENTIFIERS)) {
    const id = m[0];
    if (id.length < 2 || STOP_WORDS.has(id)) continue;
    out.push(id.toLowerCase());
    const parts = id.split(/(?<=[a-z0-9])(?=[A-Z])|[_$]+/).filter((p) => p.length >= 2);
    if (parts.length > 1) for (const p of parts) out.push(p.toLowerCase());
  }
  return out;
}
