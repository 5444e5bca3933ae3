/**
 * The one place TensorFlow.js is loaded (a development dependency: the
 * reference that checks the ONNX engine's gradients, and the previous engine
 * in the server benchmark). Backend: "wasm" (SIMD), else the pure-JS "cpu";
 * MOBILLM_TF_BACKEND=cpu|wasm forces one.
 */
import * as tf from '@tensorflow/tfjs';

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
    const order = forced ? [forced] : ['wasm', 'cpu'];
    for (const name of order) {
      const ok = name === 'wasm' ? await tryBackend('wasm', () => require('@tensorflow/tfjs-backend-wasm')) : await tryBackend(name, () => undefined);
      if (ok) {
        await tf.ready();
        return tf.getBackend();
      }
    }
    throw new Error(`no TensorFlow.js backend could be initialised (tried ${order.join(', ')})`);
  })();
  return chosen;
}
