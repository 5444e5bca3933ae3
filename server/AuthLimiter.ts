/** Failed sign-ins allowed per (user name, address) in one window; past them that pair is refused (429) without a check. */
export const MAX_AUTH_FAILURES = 10;
/**
 * Failed sign-ins from one address, over every user name, in one window past
 * which that address's checks wait SLOW_DOWN_MS first: slowed, never refused,
 * so one member of a team behind a shared (NAT) address cannot lock the others out.
 */
export const MAX_ADDRESS_FAILURES = 30;
/** Failed sign-ins of one user name from every address in one window past which its checks wait SLOW_DOWN_MS first: slowed, never refused. */
export const MAX_USER_FAILURES = 100;
export const SLOW_DOWN_MS = 1000;
/** Token checks (scrypt) running at once from one address; more wait, up to MAX_WAITING_PER_ADDRESS, and past that are refused (429). */
export const MAX_CHECKS_PER_ADDRESS = 2;
export const MAX_WAITING_PER_ADDRESS = 16;
/** Token checks running at once for one user name; more wait their turn. */
export const MAX_CHECKS_PER_USER = 4;
/** The window, milliseconds. */
export const AUTH_WINDOW_MS = 60_000;

/**
 * Failed sign-ins counted where every replica sees them (PostgreSQL), so that
 * guesses spread over replicas meet the same limits as guesses at one.
 */
export interface SharedFailures {
  /** Adds `delta` to each key's count in the current window (a new window starts at `delta`). */
  add(keys: string[], delta: number, windowMs: number): Promise<void>;
  /** The counts of `keys` in their current windows. */
  counts(keys: string[], windowMs: number): Promise<Map<string, number>>;
}

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
 * first failure is counted. Failures per (user, address) refuse that pair;
 * per address (over every user name) and per user (over every address) they
 * only slow checks down, so failures from one address never refuse a valid
 * token from another address, nor another user's from the same one. Checks
 * run at most MAX_CHECKS_PER_ADDRESS at once per address (a few more wait,
 * the rest are refused) and MAX_CHECKS_PER_USER per user (more wait). A token
 * already verified does not come here (the server accepts it without scrypt).
 */
export class AuthLimiter {
  private readonly failures = new Map<string, { count: number; since: number }>();
  /** Check places per key (`address:…`, `user:…`): how many run, and who waits for one. */
  private readonly places = new Map<string, { running: number; waiting: (() => void)[] }>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
    /** Counts shared with other replicas, when there are any. */
    private readonly shared?: SharedFailures,
  ) {}

  private failuresOf(key: string): number {
    const f = this.failures.get(key);
    return f !== undefined && this.now() - f.since < AUTH_WINDOW_MS ? f.count : 0;
  }

  private add(keys: string[], delta: number): void {
    // The shared count is best effort: the database away leaves this replica's own limits in force.
    this.shared?.add(keys.filter((k) => !k.startsWith('user:')), delta, AUTH_WINDOW_MS).catch(() => undefined);
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

  /** Waits for one of `key`'s `max` check places; false (without waiting) when `maxWaiting` already wait. */
  private async place(key: string, max: number, maxWaiting = Infinity): Promise<boolean> {
    const q = this.places.get(key) ?? { running: 0, waiting: [] };
    this.places.set(key, q);
    if (q.running < max) {
      q.running++;
      return true;
    }
    if (q.waiting.length >= maxWaiting) return false;
    await new Promise<void>((resolve) => q.waiting.push(resolve));
    return true;
  }

  private leave(key: string): void {
    const q = this.places.get(key);
    if (!q) return;
    const next = q.waiting.shift();
    if (next) next(); // the place passes to the next waiting check
    else if (--q.running === 0) this.places.delete(key);
  }

  /**
   * Admits a token check for `user` (the name the token claims, if any) from
   * `address`, or undefined when it is refused (the caller answers 429).
   */
  async begin(user: string | undefined, address: string): Promise<AuthTicket | undefined> {
    const pair = `pair:${user ?? '?'}@${address}`;
    const addr = `address:${address}`;
    const shared = this.shared ? await this.shared.counts([pair, addr], AUTH_WINDOW_MS).catch(() => undefined) : undefined;
    const failures = (k: string): number => Math.max(this.failuresOf(k), shared?.get(k) ?? 0);
    if (failures(pair) >= MAX_AUTH_FAILURES) return undefined;
    const addressSlowed = failures(addr) >= MAX_ADDRESS_FAILURES;
    const keys = [pair, addr, ...(user !== undefined ? [`user:${user}`] : [])];
    this.add(keys, 1);
    if (!(await this.place(addr, MAX_CHECKS_PER_ADDRESS, MAX_WAITING_PER_ADDRESS))) {
      this.add(keys, -1); // refused unchecked: not a failure
      return undefined;
    }
    // Slowed while holding the address's place: a guessing address gets at most MAX_CHECKS_PER_ADDRESS checks per SLOW_DOWN_MS.
    if (addressSlowed || (user !== undefined && this.failuresOf(`user:${user}`) > MAX_USER_FAILURES)) await this.sleep(SLOW_DOWN_MS);
    if (user !== undefined) await this.place(`user:${user}`, MAX_CHECKS_PER_USER);
    let ended = false;
    return {
      succeeded: () => this.add(keys, -1),
      end: () => {
        if (ended) return;
        ended = true;
        this.leave(addr);
        if (user !== undefined) this.leave(`user:${user}`);
      },
    };
  }
}
