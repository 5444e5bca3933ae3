/**
 * The one place TensorFlow.js is loaded and its backend chosen:
 *   1. "tensorflow" (CUDA) when the optional @tensorflow/tfjs-node-gpu loads,
 *   2. else "wasm" (@tensorflow/tfjs-backend-wasm, SIMD),
 *   3. else the pure-JS "cpu" backend.
 * MOBILLM_TF_BACKEND=cpu|wasm|tensorflow forces one.
 */
import * as tf from '@tensorflow/tfjs';
import { ServerError } from '../ServerError';

export { tf };

let chosen: Promise<string> | undefined;

async function tryBackend(name: string, load: () => void): Promise<boolean> {
  try {
    load();
    return await tf.setBackend(name);
  } catch {
    return false;
  }
}

export function initTensorflow(): Promise<string> {
  chosen ??= (async () => {
    const forced = process.env.MOBILLM_TF_BACKEND;
    const order = forced ? [forced] : ['tensorflow', 'wasm', 'cpu'];
    for (const name of order) {
      const ok =
        name === 'tensorflow'
          ? await tryBackend('tensorflow', () => require('@tensorflow/tfjs-node-gpu'))
          : name === 'wasm'
            ? await tryBackend('wasm', () => require('@tensorflow/tfjs-backend-wasm'))
            : await tryBackend('cpu', () => undefined);
      if (ok) {
        await tf.ready();
        return tf.getBackend();
      }
    }
    throw new ServerError('NO_BACKEND', `no TensorFlow.js backend could be initialised (tried ${order.join(', ')})`);
  })();
  return chosen;
}
