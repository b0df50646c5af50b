/**
 * The first check on a user's fp32 graph, before any sample is read: a node
 * onnxruntime cannot run, or one reading a tensor nothing makes, would
 * otherwise surface as onnxruntime's message about a nameless in-memory copy
 * (the calibration model), or as a calibration error about a missing tensor.
 * Both fail here instead, with the node, its op and the tensor named.
 */
import { QuantdError } from "../errors.ts";
import type { GraphProto, ModelProto } from "../onnx/types.ts";
import { nodeKey } from "./plan.ts";

/**
 * The operator domains onnxruntime's CPU build has kernels for (the ONNX
 * standard, ONNX-ML, its contrib and layout domains, and the training and
 * preview domains its optimizer lists in the files it saves). quantd loads no
 * custom-op library, so an op of any other domain cannot run in it unless the
 * model defines it as a local function.
 */
const ORT_DOMAINS: ReadonlySet<string> = new Set([
  "",
  "ai.onnx",
  "ai.onnx.ml",
  "ai.onnx.preview",
  "ai.onnx.training",
  "ai.onnx.preview.training",
  "com.microsoft",
  "com.microsoft.experimental",
  "com.microsoft.nchwc",
  "com.ms.internal.nhwc",
  "org.pytorch.aten",
]);

/**
 * Fails on a node whose op is in a domain onnxruntime has no kernels for and
 * that the model does not define as a local function.
 *
 * @throws QUANT_UNSUPPORTED naming the node, its domain and op
 */
function assertRunnableOps(model: ModelProto): void {
  const local = new Set((model.functions ?? []).map((f) => `${f.domain}:${f.name}`));
  model.graph.node.forEach((n, i) => {
    const domain = n.domain ?? "";
    if (ORT_DOMAINS.has(domain) || local.has(`${domain}:${n.opType}`)) return;
    const node = nodeKey(n, i);
    throw new QuantdError(
      "QUANT_UNSUPPORTED",
      `node ${node} is ${domain}:${n.opType}, a custom op onnxruntime has no kernel for (quantd loads no custom-op library): it can neither calibrate nor validate the model; export it with standard ONNX or com.microsoft ops`,
      { details: { node, opType: n.opType, domain } },
    );
  });
}

/**
 * Fails on a node that reads a tensor no graph input, initializer or node
 * makes (nodes may come in any order: onnxruntime sorts them itself).
 *
 * @throws MODEL_INVALID naming the node, its op and the tensor
 */
function assertInputsDefined(graph: GraphProto): void {
  const made = new Set<string>([
    ...graph.input.map((v) => v.name),
    ...graph.initializer.map((t) => t.name),
    ...(graph.sparseInitializer ?? []).map((t) => t.values.name),
    ...graph.node.flatMap((n) => n.output),
  ]);
  graph.node.forEach((n, i) => {
    const tensor = n.input.find((t) => t !== "" && !made.has(t));
    if (tensor === undefined) return;
    const node = nodeKey(n, i);
    throw new QuantdError(
      "MODEL_INVALID",
      `node ${node} (${n.opType}) reads ${tensor}, which no graph input, initializer or node makes: the graph is incomplete`,
      { details: { node, opType: n.opType, tensor } },
    );
  });
}

/**
 * Fails when the model's graph cannot run in onnxruntime as quantd runs it:
 * a custom-domain op, or a node reading a tensor nothing makes.
 *
 * @throws QUANT_UNSUPPORTED for an op of a domain onnxruntime has no kernels for
 * @throws MODEL_INVALID for a node input that nothing makes
 */
export function assertRunnableGraph(model: ModelProto): void {
  assertRunnableOps(model);
  assertInputsDefined(model.graph);
}
