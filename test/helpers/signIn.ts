import { WebSocket } from 'ws';

/** The HTTP status of a sign-in with `token` at `url` (101: the socket opened, and is closed again; 0: no answer), from `localAddress` when given. */
export function signInStatus(url: string, token: string, localAddress?: string): Promise<number> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, ...(localAddress ? { localAddress } : {}) });
    ws.once('open', () => {
      ws.close();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.once('error', () => resolve(0));
  });
}
