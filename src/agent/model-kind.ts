/**
 * What kind of model a file holds (fp32, int8 static, int8 dynamic), read
 * from the operator names in its bytes without decoding the graph: the
 * registry records the kind of every version it copies, and a model may be
 * hundreds of MB, so the scan runs over the copy's chunks as they pass.
 */
import type { ModelKind } from "../store/models.ts";

/**
 * An operator name as a serialized NodeProto holds it: field 4 (`op_type`,
 * tag 0x22), its length, the name. Matching the whole field, not the bare
 * name, keeps `MatMulIntegerToFloat` (a static model's fused kernel) from
 * reading as `MatMulInteger`, and `QuantizeLinear` from matching inside
 * `DynamicQuantizeLinear`.
 */
function opTypeField(name: string): Buffer {
  return Buffer.concat([Buffer.from([0x22, name.length]), Buffer.from(name, "latin1")]);
}

/** Operators that mark a model's kind, most specific first. */
const KIND_MARKERS: readonly (readonly [Buffer, ModelKind])[] = [
  [opTypeField("DynamicQuantizeLinear"), "int8-dynamic"],
  [opTypeField("MatMulInteger"), "int8-dynamic"],
  [opTypeField("QuantizeLinear"), "int8-static"],
  [opTypeField("QLinearMatMul"), "int8-static"],
];
/** Longest marker: a chunk keeps this many bytes of the previous one so a name split across reads is found. */
export const MARKER_OVERLAP = Math.max(...KIND_MARKERS.map(([m]) => m.length));

/**
 * The kind of a serialized model, from the operator names its bytes hold
 * (decoding a model blocks the event loop for hundreds of ms on a board; a
 * byte search takes a few).
 */
export function detectModelKindFromBytes(bytes: Uint8Array): ModelKind {
  const found = new Set<ModelKind>();
  scanKindMarkers(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), found);
  return kindOf(found);
}

export function scanKindMarkers(buf: Buffer, found: Set<ModelKind>): void {
  for (const [marker, kind] of KIND_MARKERS) if (!found.has(kind) && buf.includes(marker)) found.add(kind);
}

export function kindOf(found: ReadonlySet<ModelKind>): ModelKind {
  if (found.has("int8-dynamic")) return "int8-dynamic";
  if (found.has("int8-static")) return "int8-static";
  return "fp32";
}
