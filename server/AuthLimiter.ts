/** Failed sign-ins allowed per (user name, address) in one window; past them that pair is refused (429) without a check. */
export const MAX_AUTH_FAILURES = 10;
/** Failed sign-ins allowed from one address, over every user name, in one window. */
export const MAX_ADDRESS_FAILURES = 30;
/** Failed sign-ins of one user name from every address in one window past which its checks wait SLOW_DOWN_MS first: slowed, never refused. */
export const MAX_USER_FAILURES = 100;
export const SLOW_DOWN_MS = 1000;
/** Token checks (scrypt) running at once from one address; more are refused (429). */
export const MAX_CHECKS_PER_ADDRESS = 2;
/** Token checks running at once for one user name; more wait their turn. */
export const MAX_CHECKS_PER_USER = 4;
/** The window, milliseconds. */
export const AUTH_WINDOW_MS = 60_000;

/** One admitted token check: say whether it succeeded, then end it. */
export interface AuthTicket {
  /** The token was right: the attempt counted as a failure when it began is taken back. */
  succeeded(): void;
  /** Frees the check's places (call once, whatever happened). */
  end(): void;
}

/**
 * Limits token checks so that guessing costs the server little and cannot
 * lock a user out. An attempt counts as a failure when it begins (a success
 * takes it back), so concurrent guesses cannot all be checked before the
 * first failure is counted. Failures are counted per (user, address) and per
 * address, which refuse; per user over every address they only slow checks
 * down, so failures from one address never refuse a valid token from
 * another. Checks run at most MAX_CHECKS_PER_ADDRESS at once per address
 * (more are refused) and MAX_CHECKS_PER_USER per user (more wait). A token
 * already verified does not come here (the server accepts it without scrypt).
 */
export class AuthLimiter {
  private readonly failures = new Map<string, { count: number; since: number }>();
  private readonly runningAt = new Map<string, number>();
  private readonly users = new Map<string, { running: number; waiting: (() => void)[] }>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
  ) {}

  private failuresOf(key: string): number {
    const f = this.failures.get(key);
    return f !== undefined && this.now() - f.since < AUTH_WINDOW_MS ? f.count : 0;
  }

  private add(keys: string[], delta: number): void {
    const now = this.now();
    for (const k of keys) {
      const f = this.failures.get(k);
      if (!f || now - f.since >= AUTH_WINDOW_MS) {
        if (delta > 0) this.failures.set(k, { count: delta, since: now });
      } else f.count = Math.max(0, f.count + delta);
    }
    if (this.failures.size > 10_000) {
      for (const [k, f] of this.failures) if (now - f.since >= AUTH_WINDOW_MS) this.failures.delete(k);
    }
  }

  /** Waits for one of `user`'s check places. */
  private async turn(user: string): Promise<void> {
    const q = this.users.get(user) ?? { running: 0, waiting: [] };
    this.users.set(user, q);
    if (q.running >= MAX_CHECKS_PER_USER) await new Promise<void>((resolve) => q.waiting.push(resolve));
    else q.running++;
  }

  private leave(user: string): void {
    const q = this.users.get(user);
    if (!q) return;
    const next = q.waiting.shift();
    if (next) next(); // the place passes to the next waiting check
    else if (--q.running === 0) this.users.delete(user);
  }

  /**
   * Admits a token check for `user` (the name the token claims, if any) from
   * `address`, or undefined when it is refused (the caller answers 429).
   */
  async begin(user: string | undefined, address: string): Promise<AuthTicket | undefined> {
    const pair = `pair:${user ?? '?'}@${address}`;
    const addr = `address:${address}`;
    if (this.failuresOf(pair) >= MAX_AUTH_FAILURES || this.failuresOf(addr) >= MAX_ADDRESS_FAILURES) return undefined;
    if ((this.runningAt.get(address) ?? 0) >= MAX_CHECKS_PER_ADDRESS) return undefined;
    const keys = [pair, addr, ...(user !== undefined ? [`user:${user}`] : [])];
    this.add(keys, 1);
    this.runningAt.set(address, (this.runningAt.get(address) ?? 0) + 1);
    if (user !== undefined) {
      if (this.failuresOf(`user:${user}`) > MAX_USER_FAILURES) await this.sleep(SLOW_DOWN_MS);
      await this.turn(user);
    }
    let ended = false;
    return {
      succeeded: () => this.add(keys, -1),
      end: () => {
        if (ended) return;
        ended = true;
        const n = (this.runningAt.get(address) ?? 1) - 1;
        if (n > 0) this.runningAt.set(address, n);
        else this.runningAt.delete(address);
        if (user !== undefined) this.leave(user);
      },
    };
  }
}
