/** Closing brackets and the openers they match. */
const CLOSERS: Record<string, string> = { ')': '(', ']': '[', '}': '{' };

/**
 * Where a multi-line completion should end, given the text generated so far
 * and the indentation (in characters) of the cursor's line: before a closing
 * bracket that has no opener in the completion (it belongs to the code
 * around the cursor), or before a later line indented less than the cursor's
 * line (the block is over). Undefined while neither has happened.
 */
export function completionEnd(text: string, cursorIndent: number): number | undefined {
  const open: string[] = [];
  let lineStart = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '(' || c === '[' || c === '{') open.push(c);
    else if (c in CLOSERS) {
      if (open.length === 0) return i;
      open.pop();
    } else if (c === '\n') {
      lineStart = i + 1;
      const rest = text.slice(lineStart);
      const line = rest.split('\n')[0]!;
      const indent = line.length - line.trimStart().length;
      // Judge a line once its indentation is known (it has a visible character, or it ended).
      if (line.trim().length > 0 && indent < cursorIndent) return i;
    }
  }
  return undefined;
}

/** The indentation (leading spaces and tabs) of the last line of `prefix`. */
export function cursorIndent(prefix: string): number {
  const line = prefix.slice(prefix.lastIndexOf('\n') + 1);
  return line.length - line.trimStart().length;
}
