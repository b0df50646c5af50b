/**
 * Hand-encoded one-node ONNX models for tests that need a real model with
 * particular inputs (e.g. a model that is not a BERT). Written straight from the
 * field numbers of onnx.proto so it depends on nothing under test.
 */

/** ONNX element types used here. */
export const ONNX_FLOAT = 1;
export const ONNX_INT64 = 7;

function varint(n: number | bigint): number[] {
  let v = BigInt(n);
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return out;
}

function fieldVarint(field: number, n: number): number[] {
  return [...varint((field << 3) | 0), ...varint(n)];
}

function fieldBytes(field: number, bytes: number[]): number[] {
  return [...varint((field << 3) | 2), ...varint(bytes.length), ...bytes];
}

function fieldString(field: number, s: string): number[] {
  return fieldBytes(field, [...new TextEncoder().encode(s)]);
}

/** A graph input or output: name, element type and dims (strings are symbolic). */
export interface TinyValue {
  name: string;
  elemType: number;
  dims: (number | string)[];
}

function valueInfo(v: TinyValue): number[] {
  const dims = v.dims.flatMap((d) =>
    fieldBytes(1, typeof d === "number" ? fieldVarint(1, d) : fieldString(2, d)),
  );
  const tensorType = [...fieldVarint(1, v.elemType), ...fieldBytes(2, dims)];
  return [...fieldString(1, v.name), ...fieldBytes(2, fieldBytes(1, tensorType))];
}

/** One node: operator, inputs, outputs and integer attributes. */
export interface TinyNode {
  opType: string;
  inputs: string[];
  outputs: string[];
  intAttrs?: Record<string, number>;
}

/** Encodes a model (IR 8, opset 17) with the given nodes, inputs and outputs. */
export function tinyOnnxModel(nodes: TinyNode[], inputs: TinyValue[], outputs: TinyValue[]): Uint8Array {
  const graph: number[] = [];
  for (const [i, n] of nodes.entries()) {
    const node = [
      ...n.inputs.flatMap((x) => fieldString(1, x)),
      ...n.outputs.flatMap((x) => fieldString(2, x)),
      ...fieldString(3, `node${i}`),
      ...fieldString(4, n.opType),
      ...Object.entries(n.intAttrs ?? {}).flatMap(([name, value]) =>
        fieldBytes(5, [...fieldString(1, name), ...fieldVarint(3, value), ...fieldVarint(20, 2)]),
      ),
    ];
    graph.push(...fieldBytes(1, node));
  }
  graph.push(...fieldString(2, "tiny"));
  for (const v of inputs) graph.push(...fieldBytes(11, valueInfo(v)));
  for (const v of outputs) graph.push(...fieldBytes(12, valueInfo(v)));
  const model = [
    ...fieldVarint(1, 8),
    ...fieldString(2, "quantd-test"),
    ...fieldBytes(7, graph),
    ...fieldBytes(8, [...fieldString(1, ""), ...fieldVarint(2, 17)]),
  ];
  return new Uint8Array(model);
}
