/** Failed sign-ins allowed per user name and per address in one window. */
export const MAX_AUTH_FAILURES = 10;
/** The window, milliseconds. */
export const AUTH_WINDOW_MS = 60_000;

/**
 * Counts failed sign-ins per key (a user name, an address) in a fixed window;
 * a key over MAX_AUTH_FAILURES is refused without checking its token, so
 * guessing costs the server nothing and cannot slow it down for others.
 */
export class AuthLimiter {
  private readonly failures = new Map<string, { count: number; since: number }>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Whether any of `keys` has used up its failures in the current window. */
  blocked(keys: string[]): boolean {
    return keys.some((k) => {
      const f = this.failures.get(k);
      return f !== undefined && this.now() - f.since < AUTH_WINDOW_MS && f.count >= MAX_AUTH_FAILURES;
    });
  }

  failed(keys: string[]): void {
    const now = this.now();
    for (const k of keys) {
      const f = this.failures.get(k);
      if (!f || now - f.since >= AUTH_WINDOW_MS) this.failures.set(k, { count: 1, since: now });
      else f.count++;
    }
    if (this.failures.size > 10_000) {
      for (const [k, f] of this.failures) if (now - f.since >= AUTH_WINDOW_MS) this.failures.delete(k);
    }
  }
}
