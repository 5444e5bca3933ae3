/**
 * Turns token bytes into text one whole character at a time: a character
 * whose UTF-8 bytes are split across tokens appears once all its bytes have
 * arrived, and bytes left incomplete at the end are dropped, not shown as
 * U+FFFD. (Bytes that can never form a character still decode as U+FFFD.)
 */
export class WholeCharacters {
  private readonly decoder = new TextDecoder('utf-8');

  /** The whole characters these bytes complete (possibly ''). */
  push(bytes: Uint8Array): string {
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Ends the text: an incomplete trailing character is dropped. */
  end(): void {
    this.decoder.decode(new Uint8Array(0), { stream: false });
  }
}
