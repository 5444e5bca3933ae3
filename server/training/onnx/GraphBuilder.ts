import { onnx } from 'onnx-proto';

/** Element types the graphs use. */
export type ElementType = 'float32' | 'float16' | 'int64';
const DATA_TYPE: Record<ElementType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int64: onnx.TensorProto.DataType.INT64,
};

/** A dimension: a number, or a name for a size given at run time (tokens). */
export type Dim = number | string;

/** The ONNX opset the graphs are written for (ReduceMean/ReduceMax take axes as attributes here). */
export const OPSET = 17;

/**
 * Builds one ONNX graph with onnx-proto: typed inputs and outputs, nodes by
 * operator name, constants as initializers. Every value is named by the
 * builder (`v<N>`) unless the caller names it; `build()` encodes the model.
 * Shapes are stated in comments at the call sites, as tensor code in this
 * project does.
 */
export class GraphBuilder {
  private readonly nodes: onnx.INodeProto[] = [];
  private readonly inputs: onnx.IValueInfoProto[] = [];
  private readonly outputs: onnx.IValueInfoProto[] = [];
  private readonly initializers: onnx.ITensorProto[] = [];
  private readonly constants = new Map<string, string>();
  private counter = 0;

  constructor(private readonly name: string) {}

  input(name: string, type: ElementType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Marks `value` as a graph output named `name` (an Identity when the names differ). */
  output(value: string, name: string, type: ElementType, dims: Dim[]): void {
    const out = value === name ? value : this.op('Identity', [value], {}, name);
    this.outputs.push(valueInfo(out, type, dims));
  }

  /** A float32 scalar or vector constant (shared between uses). */
  constant(values: number | number[], dims: number[] = []): string {
    const list = typeof values === 'number' ? [values] : values;
    const key = `${dims.join('x')}:${list.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `c${this.constants.size}`;
      this.initializers.push({ name, dataType: DATA_TYPE.float32, dims, floatData: list });
      this.constants.set(key, name);
    }
    return name;
  }

  /** An int64 vector constant (axes, shapes). */
  ints(values: number[]): string {
    const key = `i:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `k${this.constants.size}`;
      this.initializers.push({ name, dataType: DATA_TYPE.int64, dims: [values.length], int64Data: values });
      this.constants.set(key, name);
    }
    return name;
  }

  /** One node; returns its (first) output's name. */
  op(type: string, inputs: string[], attributes: Record<string, number | number[]> = {}, outputName?: string): string {
    const out = outputName ?? `v${this.counter++}`;
    this.nodes.push({
      opType: type,
      input: inputs,
      output: [out],
      name: `${type}_${out}`,
      attribute: Object.entries(attributes).map(([name, v]) => attribute(name, v)),
    });
    return out;
  }

  // Shorthands for the operators the side network needs.
  matmul(a: string, b: string): string {
    return this.op('MatMul', [a, b]);
  }
  add(a: string, b: string): string {
    return this.op('Add', [a, b]);
  }
  sub(a: string, b: string): string {
    return this.op('Sub', [a, b]);
  }
  mul(a: string, b: string): string {
    return this.op('Mul', [a, b]);
  }
  div(a: string, b: string): string {
    return this.op('Div', [a, b]);
  }
  transpose(a: string): string {
    return this.op('Transpose', [a], { perm: [1, 0] });
  }
  /** Mean over the last axis, kept: [n, k] -> [n, 1]. */
  meanLast(a: string): string {
    return this.op('ReduceMean', [a], { axes: [-1], keepdims: 1 });
  }
  /** Sum over the last axis, kept: [n, k] -> [n, 1]. */
  sumLast(a: string): string {
    return this.op('ReduceSum', [a, this.ints([-1])], { keepdims: 1 });
  }
  /** Max over the last axis, kept: [n, k] -> [n, 1]. */
  maxLast(a: string): string {
    return this.op('ReduceMax', [a], { axes: [-1], keepdims: 1 });
  }
  /** Sum of every element: -> scalar. */
  sumAll(a: string): string {
    return this.op('ReduceSum', [a], { keepdims: 0 });
  }

  build(): Uint8Array {
    const model: onnx.IModelProto = {
      irVersion: 8,
      producerName: 'mobillm',
      opsetImport: [{ domain: '', version: OPSET }],
      graph: { name: this.name, node: this.nodes, input: this.inputs, output: this.outputs, initializer: this.initializers },
    };
    return onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish();
  }
}

function valueInfo(name: string, type: ElementType, dims: Dim[]): onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType: DATA_TYPE[type], shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function attribute(name: string, v: number | number[]): onnx.IAttributeProto {
  const A = onnx.AttributeProto.AttributeType;
  if (Array.isArray(v)) return { name, type: A.INTS, ints: v };
  return Number.isInteger(v) ? { name, type: A.INT, i: v } : { name, type: A.FLOAT, f: v };
}
