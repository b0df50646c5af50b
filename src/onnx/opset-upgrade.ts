/**
 * Moves a model from ONNX opset 11 or 12 to opset 13, the first with
 * per-axis QuantizeLinear/DequantizeLinear, which int8 weights with one scale
 * per channel need. TorchScript exports of older models are at 11 or 12.
 *
 * Only ops whose meaning changed on the way are rewritten (everything else
 * gained types, not semantics): Unsqueeze, Squeeze and ReduceSum take their
 * axes and Split its sizes as an input instead of an attribute; Softmax,
 * LogSoftmax and Hardmax normalize along one axis instead of over a
 * flattened tail, the same thing when the axis is the last one; Dropout's
 * ratio attribute is gone (inference ignores it). A Softmax on another axis,
 * or one whose rank inference cannot tell, is refused rather than guessed.
 */
import { QuantdError } from "../errors.ts";
import { inferTypes } from "./infer.ts";
import { makeTensor } from "./tensor.ts";
import type { ModelProto, NodeProto, TensorProto } from "./types.ts";
import { DataType } from "./types.ts";

/** The opset models are moved to. */
export const UPGRADED_OPSET = 13;

/** The oldest opset {@link upgradeOpset} moves from. */
export const OLDEST_UPGRADABLE_OPSET = 11;

/** What {@link upgradeOpset} did. */
export interface OpsetUpgrade {
  /** The input model when it needed nothing, else an upgraded copy. */
  model: ModelProto;
  /** The default-domain opset it had. */
  from: number;
  /** The opset it has now. */
  to: number;
}

const AXES_TO_INPUT: Readonly<Record<string, string>> = {
  Unsqueeze: "axes",
  Squeeze: "axes",
  ReduceSum: "axes",
  Split: "split",
};

const SOFTMAX_FAMILY: ReadonlySet<string> = new Set(["Softmax", "LogSoftmax", "Hardmax"]);

function isDefault(n: NodeProto): boolean {
  return n.domain === "" || n.domain === "ai.onnx";
}

/**
 * Upgrades an opset 11/12 model to 13; returns models at 13 or newer as they are.
 *
 * @throws QUANT_UNSUPPORTED when the opset is older than 11, or a node's meaning would change (naming it)
 */
export function upgradeOpset(model: ModelProto): OpsetUpgrade {
  const def = model.opsetImport.find((o) => o.domain === "" || o.domain === "ai.onnx");
  const from = def?.version ?? 0;
  if (from >= UPGRADED_OPSET) return { model, from, to: from };
  if (from < OLDEST_UPGRADABLE_OPSET) {
    throw new QuantdError(
      "QUANT_UNSUPPORTED",
      `the model uses ONNX opset ${from}; quantd needs opset ${UPGRADED_OPSET} or newer (per-channel DequantizeLinear) and upgrades models from opset ${OLDEST_UPGRADABLE_OPSET}`,
      { details: { opset: from } },
    );
  }
  const g = model.graph;
  const types = inferTypes(g).types;
  const taken = new Set<string>([
    ...g.initializer.map((t) => t.name),
    ...g.node.flatMap((n) => [n.name, ...n.output]),
  ]);
  const fresh = (base: string): string => {
    let name = base;
    for (let k = 1; taken.has(name); k++) name = `${base}_${k}`;
    taken.add(name);
    return name;
  };
  const added: TensorProto[] = [];
  const node = g.node.map((n, index): NodeProto => {
    if (!isDefault(n)) return n;
    const attrName = AXES_TO_INPUT[n.opType];
    if (attrName !== undefined) {
      const a = n.attribute.find((x) => x.name === attrName);
      if (a === undefined) return n;
      const values = a.ints ?? [];
      const name = fresh(`${n.name || n.output[0]}_${attrName}`);
      added.push(
        makeTensor(
          name,
          DataType.INT64,
          [values.length],
          BigInt64Array.from(values, (v) => BigInt(v)),
        ),
      );
      const input = [...n.input];
      // Split's sizes are input 1, like the others' axes.
      input[1] = name;
      return { ...n, input, attribute: n.attribute.filter((x) => x !== a) };
    }
    if (SOFTMAX_FAMILY.has(n.opType)) {
      const axis = n.attribute.find((x) => x.name === "axis")?.i ?? 1;
      const rank = types.get(n.input[0] ?? "")?.shape?.length;
      const last = rank !== undefined && (axis === -1 || axis === rank - 1);
      if (!last) {
        const label = n.name || `${n.opType}#${index}`;
        throw new QuantdError(
          "QUANT_UNSUPPORTED",
          `cannot move node ${label} (${n.opType}, axis ${axis}${rank === undefined ? ", rank unknown" : ` of rank ${rank}`}) from opset ${from} to ${UPGRADED_OPSET}: its meaning changes unless it normalizes the last axis`,
          { details: { node: label, opType: n.opType, axis, opset: from } },
        );
      }
      return n;
    }
    if (n.opType === "Dropout") return { ...n, attribute: n.attribute.filter((x) => x.name !== "ratio") };
    return n;
  });
  const opsetImport = model.opsetImport.map((o) =>
    o.domain === "" || o.domain === "ai.onnx" ? { ...o, version: UPGRADED_OPSET } : o,
  );
  const upgraded: ModelProto = {
    ...model,
    // Opset 13 needs IR version 7.
    irVersion: Math.max(model.irVersion, 7),
    opsetImport,
    graph: { ...g, node, initializer: [...g.initializer, ...added] },
  };
  return { model: upgraded, from, to: UPGRADED_OPSET };
}
