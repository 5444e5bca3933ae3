/**
 * The one place onnxruntime-node is loaded. float16 tensors must reach the
 * native binding as Uint16Array: on runtimes that have Float16Array (Node 24+,
 * which code-server's and newer VS Code's extension hosts run, and where the
 * embedded server lives), onnxruntime-common turns float16 data into a
 * Float16Array, which onnxruntime-node 1.30's binding reads as zero bytes
 * ("not enough space", microsoft/onnxruntime#32323). onnxruntime-common picks
 * the float16 array type once, at the first tensor it builds; that first
 * tensor is built here with Float16Array hidden for that one synchronous
 * call, so float16 stays Uint16Array for this module instance. OnnxEngine's
 * start-up probe runs a float16 input to prove it.
 */
import * as ort from 'onnxruntime-node';

const float16Array = (globalThis as { Float16Array?: unknown }).Float16Array;
if (float16Array !== undefined) {
  delete (globalThis as { Float16Array?: unknown }).Float16Array;
  try {
    new ort.Tensor('float16', new Uint16Array(1), [1]);
  } finally {
    (globalThis as { Float16Array?: unknown }).Float16Array = float16Array;
  }
}

export { ort };
