/**
 * The quantization report: what was quantized, from what, how, and how well.
 * It is the record an engineer (or the fleet controller) reads to trust an int8
 * model without re-running anything, so it carries hashes of both files, the
 * exact samples split, every range that was chosen, every node left in fp32 and
 * why, and the gate's figures. The shape is versioned by {@link REPORT_SCHEMA};
 * a field may be added within a version, never renamed or removed.
 */
import { createHash } from "node:crypto";
import { stat } from "node:fs/promises";
import { writeFileDurable } from "../core/files.ts";
import { sha256File } from "../core/hash.ts";
import { QuantdError } from "../errors.ts";
import type { LengthCoverage, LengthSets } from "./drift.ts";
import type { GateMetrics } from "./gate.ts";
import type { ValidationSummary } from "./validate.ts";

/** Schema tag of the report JSON. */
export const REPORT_SCHEMA = "quantd.quantize-report/1";

/** The report's file name in the directory `quantize --out DIR` writes (and the agent reads it from). */
export const QUANTIZE_REPORT_FILE = "quantize-report.json";

/** A model file as the report names it. */
export interface FileFacts {
  path: string;
  /** Lower-case hex SHA-256 of the file bytes. */
  sha256: string;
  bytes: number;
}

/** Why a node stayed in fp32. */
export type KeptFp32Reason =
  | "user-exclude"
  | "unsupported"
  | "sensitivity"
  /** Reads a weight another node keeps fp32: the file holds it once. */
  | "shared-weight"
  /** Its weight is int8 on disk (dequantized when it runs); the node itself computes in fp32. */
  | "weight-only";

/** A node the int8 model computes in fp32. */
export interface KeptFp32Node {
  node: string;
  opType?: string;
  reason: KeptFp32Reason;
  /** Human detail: the planner's reason, or the node's measured error for `sensitivity`. */
  detail?: string;
}

/** A node the planner looked at and did not quantize, with its reason (as the planner states it). */
export interface SkippedNodeEntry {
  node: string;
  opType: string;
  /** The planner's reason code (`unsupported-op`, `excluded`, `mask-sentinel`, …). */
  reason: string;
  /** Which tensor, attribute or range made it so. */
  detail?: string;
}

/** The range chosen for one quantized tensor. */
export interface TensorRangeEntry {
  min: number;
  max: number;
  scale?: number;
  zeroPoint?: number;
}

/** Measured error of one quantized node's output in the candidate, against fp32. */
export interface LayerErrorEntry {
  node: string;
  opType: string;
  /** The tensor compared (the node's first output). */
  tensor: string;
  /** ‖int8 − fp32‖ / ‖fp32‖ of that tensor over the probe samples. */
  relError: number;
  /** Error this node adds over the worst of its inputs (the fallback's estimate of what keeping it fp32 gains). */
  addedError: number;
  /** Bytes keeping it in fp32 adds to the model (its float weights at 4 bytes instead of 1). */
  fp32CostBytes?: number;
  /**
   * The fallback's entry for a shared weight: how many nodes read it (all kept fp32 together);
   * `addedError` is then their sum and `relError` their worst.
   */
  sharedReaders?: number;
}

/** One fallback attempt: the candidate rebuilt with some nodes kept in fp32. */
export interface FallbackTrial {
  keptFp32: string[];
  agreement: number;
  meanAbsLogitDiff: number;
  passed: boolean;
  /** Nodes this trial added to `keptFp32` (the best estimated gain per byte first). */
  added?: string[];
  /** Lower confidence bound of the agreement. */
  agreementLower?: number;
  /** What the trial bought against the candidate it started from: agreement points (fraction) and bytes paid. */
  bought?: TrialBought;
  /** The trial did not help (its candidate ranked no better than where it started): its nodes went back to int8. */
  reverted?: boolean;
  /**
   * The size phase, after the gate held: nodes this trial put back to int8 (`bought.bytes` is then the
   * bytes saved, negative). When it missed the gate it is `reverted`: the nodes stay fp32.
   */
  dropped?: string[];
}

/** What a trial that costs no bytes measured, and bought against the build it started from. */
export interface TrialFigures {
  agreement: number;
  agreementLower: number;
  meanAbsLogitDiff: number;
  passed: boolean;
  /** Build and validation time, ms. */
  ms: number;
  /** Against the build the step started from (bytes are 0: a range costs none). */
  bought: TrialBought;
}

/** What a trial bought against the build it started from: the change of each figure, and the bytes paid. */
export interface TrialBought {
  agreement: number;
  agreementLower: number;
  meanAbsLogitDiff: number;
  bytes: number;
}

/** The {@link TrialBought} of a trial that measured `metrics`, started from `from` and paid `bytes`. */
export function boughtAgainst(metrics: GateMetrics, from: GateMetrics, bytes: number): TrialBought {
  return {
    agreement: metrics.agreement - from.agreement,
    agreementLower: metrics.agreementLower - from.agreementLower,
    meanAbsLogitDiff: metrics.meanAbsLogitDiff - from.meanAbsLogitDiff,
    bytes,
  };
}

/** The candidate calibrated with another method, tried before any node is kept in fp32. */
export interface MethodTrial extends TrialFigures {
  method: string;
}

/**
 * A build whose tensors each take the range of their best calibration method
 * (`method-mix.ts`), tried after the whole-model methods and before any node is
 * kept in fp32.
 */
export interface TensorMethodTrial extends TrialFigures {
  /** Tensors whose range came from another method, with the error their readers were estimated to lose. */
  tensors: { tensor: string; method: string; gain: number }[];
  /** The result (and the fp32 fallback after it) builds on this trial. */
  used?: boolean;
}

/** One bias the correction changed: its readers, and the mean |E[int8 − fp32]| per channel of their outputs. */
export interface BiasCorrectionEntry {
  bias: string;
  /** Quantized MatMuls whose output gets it (several for a shared bias). */
  readers: number;
  /** On the calibration samples, before the correction. */
  before: number;
  /** On the calibration samples, with every bias corrected. */
  after: number;
}

/**
 * The build with its biases corrected (`bias-correction.ts`): each quantized
 * MatMul's mean output error on the calibration samples taken off its bias,
 * tried after the calibration methods and before any node is kept in fp32.
 */
export interface BiasCorrectionTrial extends TrialFigures {
  /** Biases corrected (each one tensor in the file: no byte added). */
  biases: number;
  /** Quantized MatMuls reading them. */
  readers: number;
  /** Biases read by several MatMuls (ALBERT's shared layer): one correction, their readers' mean error. */
  shared: number;
  /** Passes over the biases in graph order (2 when one is shared). */
  sweeps: number;
  /** Runs of the int8 model over the calibration samples. */
  runs: number;
  /** Mean |E[int8 − fp32]| per channel of the corrected outputs on the calibration samples, before and after. */
  meanBiasBefore: number;
  meanBiasAfter: number;
  /** Each bias: its readers, and the mean |E[int8 − fp32]| of their outputs before and after. */
  perBias: BiasCorrectionEntry[];
  /** The result (and the fp32 fallback after it) builds on this trial. */
  used?: boolean;
}

/** One format `--mode auto` tried. */
export interface CandidateEntry {
  mode: "static" | "dynamic";
  method?: string;
  /** Static only: `qdq` (portable) or `fused` (onnxruntime's MatMulIntegerToFloat). */
  format?: string;
  /** Static only: activation type, `uint8` (U8S8 with the int8 weights) or `int8` (S8S8). */
  activations?: string;
  /** Absent when the candidate was not validated (`validated: false`). */
  agreement?: number;
  /** Lower confidence bound of the agreement (at the gate's confidence). */
  agreementLower?: number;
  /** Absent when the candidate was not validated. */
  meanAbsLogitDiff?: number;
  passed: boolean;
  /**
   * `false` when auto mode built and timed it but did not validate it: slower
   * than a format that had already passed, it could not be chosen (`note` says
   * which). Absent for every validated candidate.
   */
  validated?: false;
  /** p50 latency at the benchmark shape, when measured. */
  p50Ms?: number;
  chosen: boolean;
  /** Why it was not chosen, or why it could not be built. */
  note?: string;
}

/** What quantd did to the fp32 graph before quantizing it (the same function, in ops it can quantize). */
export interface GraphChanges {
  /** The model's default-domain opset, and the one written (13 for an upgraded opset 11/12 model). */
  opset: { from: number; to: number };
  /** Fused contrib ops rewritten as the standard ops they fuse (FusedGemm, FusedMatMul, EmbedLayerNormalization). */
  lowered: { node: string; opType: string; into: string }[];
}

/** The report JSON (schema {@link REPORT_SCHEMA}). */
export interface QuantizeReport {
  schema: typeof REPORT_SCHEMA;
  createdAt: string;
  /** `written`: the int8 model is at `model.int8.path`; `gate-not-met`: nothing was written. */
  outcome: "written" | "gate-not-met";
  versions: { quantd: string; onnxruntime: string };
  model: {
    fp32: FileFacts;
    /** Absent when nothing was written. */
    int8?: FileFacts;
    /** int8 bytes / fp32 bytes, when written. */
    sizeRatio?: number;
  };
  /** What the user asked for (`auto` lets quantd pick). */
  requestedMode: "static" | "dynamic" | "auto";
  /** The format of the result (or of the best candidate when the gate was not met). */
  mode: "static" | "dynamic";
  /** Calibration method (static mode only). */
  method?: string;
  /** How static MatMuls are written: `qdq` or `fused` (static mode only). */
  format?: string;
  options: {
    perChannel: boolean;
    reduceRange: boolean;
    quantizeEmbeddings: boolean;
    quantizeAttentionMatMuls: boolean;
    exclude: string[];
  };
  samples: {
    /** Where they came from (a TSV or store path). */
    source: string;
    validationSource: string;
    available: number;
    calibration: number;
    validation: number;
    /** Samples cut to the model's longest sequence. */
    truncated: { calibration: number; validation: number };
    maxSequenceLength: number;
    /** The split in one line, with why (absent in reports written before it existed). */
    split?: string;
    /** Token lengths of the calibration and validation samples, and of live traffic when the agent counted it. */
    lengths?: LengthSets;
  };
  /** Input lengths the model's ranges (static) or the gate (dynamic) covered: what the agent counts live inputs against. */
  coverage?: LengthCoverage;
  gate: {
    minAgreement: number;
    maxAccuracyDrop?: number;
    /** Confidence level of the agreement's lower bound. */
    confidence?: number;
    /** `bound` (the lower bound must clear `minAgreement`) or `point`. */
    decideOn?: "bound" | "point";
    /** fp32 top-2 margin under which samples were left out of the gate. */
    ignoreMargin?: number;
    passed: boolean;
    failures: string[];
  };
  /** Figures of the result (or of the best candidate) on the validation samples. */
  metrics: GateMetrics;
  /** Per-tensor ranges chosen by calibration (static mode). */
  ranges: Record<string, TensorRangeEntry>;
  /** Per-layer output error against fp32 (worst first); empty when not measured. */
  layerError: LayerErrorEntry[];
  keptFp32: KeptFp32Node[];
  skipped: SkippedNodeEntry[];
  /** Graph rewrites made before quantizing (absent in reports written before they existed). */
  graph?: GraphChanges;
  /** `--mode auto`: why these candidates (the board profile's reason) and why the winner won. */
  auto?: { why: string; decision: string };
  /**
   * The fallback: other calibration methods first (`methods`, absent in older reports), then a method per
   * tensor (`tensorMethods`, absent in older reports), then the bias correction (`biasCorrection`), then nodes
   * kept in fp32 (`trials`).
   */
  fallback: {
    budget: number;
    trials: FallbackTrial[];
    methods?: MethodTrial[];
    tensorMethods?: TensorMethodTrial[];
    /** The bias correction (absent when not tried, and in older reports). */
    biasCorrection?: BiasCorrectionTrial;
  };
  candidates: CandidateEntry[];
  timings: {
    calibrationMs: number;
    quantizationMs: number;
    validationMs: number;
    fallbackMs: number;
    benchmarkMs: number;
    totalMs: number;
  };
  /** Peak resident memory of the process over the run, in bytes. */
  peakRssBytes: number;
  /** How validation ran: batches, looks, fp32 logits reused, early stops (absent in older reports). */
  validation?: ValidationSummary;
  /** Non-fatal notes (e.g. how the validation set was split off). */
  warnings: string[];
}

/**
 * SHA-256 and size of a file, streamed so a large model is never held twice.
 *
 * @throws FILE_NOT_FOUND when the file does not exist
 * @throws FILE_UNREADABLE when it cannot be read
 */
export async function describeFile(path: string): Promise<FileFacts> {
  let bytes: number;
  try {
    bytes = (await stat(path)).size;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? "FILE_NOT_FOUND" : "FILE_UNREADABLE";
    throw new QuantdError(code, `cannot read ${path}`, { cause: err, details: { path } });
  }
  let sha256: string;
  try {
    sha256 = await sha256File(path);
  } catch (err) {
    throw new QuantdError("FILE_UNREADABLE", `cannot read ${path}`, { cause: err, details: { path } });
  }
  return { path, sha256, bytes };
}

/** SHA-256 and size of bytes about to be written at `path`. */
export function describeBytes(path: string, bytes: Uint8Array): FileFacts {
  return { path, sha256: createHash("sha256").update(bytes).digest("hex"), bytes: bytes.byteLength };
}

/**
 * The report as JSON text. Non-finite numbers (an infinite logit error from a
 * NaN output) become `null`, as JSON has no other way to say them; the gate
 * verdict carries the meaning.
 */
export function renderReport(report: QuantizeReport): string {
  return `${JSON.stringify(report, (_k, v: unknown) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`;
}

/**
 * Writes the report atomically and durably (a temporary file beside it, fsync,
 * then a rename), so a reader never sees half a report.
 *
 * @throws DISK_FULL when the disk is full
 * @throws FILE_WRITE_FAILED when the file cannot be written
 */
export async function writeReport(path: string, report: QuantizeReport): Promise<void> {
  await writeFileDurable(path, renderReport(report));
}

/**
 * Checks that a parsed JSON value has the report's shape (schema tag and the
 * required fields with the right kinds). For consumers that read reports
 * written by another quantd version.
 *
 * @throws DATA_MALFORMED naming the first missing or mistyped field
 */
export function assertReportShape(value: unknown): asserts value is QuantizeReport {
  const fail = (field: string, want: string): never => {
    throw new QuantdError("DATA_MALFORMED", `quantize report: ${field} should be ${want}`, {
      details: { field },
    });
  };
  if (typeof value !== "object" || value === null) fail("the report", "an object");
  const r = value as Record<string, unknown>;
  if (r["schema"] !== REPORT_SCHEMA) fail("schema", `"${REPORT_SCHEMA}"`);
  const objects = [
    "model",
    "options",
    "samples",
    "gate",
    "metrics",
    "ranges",
    "fallback",
    "timings",
    "versions",
  ];
  for (const k of objects) if (typeof r[k] !== "object" || r[k] === null) fail(k, "an object");
  for (const k of ["layerError", "keptFp32", "skipped", "candidates", "warnings"]) {
    if (!Array.isArray(r[k])) fail(k, "an array");
  }
  if (r["outcome"] !== "written" && r["outcome"] !== "gate-not-met") fail("outcome", "written|gate-not-met");
  if (r["mode"] !== "static" && r["mode"] !== "dynamic") fail("mode", "static|dynamic");
  if (typeof r["peakRssBytes"] !== "number") fail("peakRssBytes", "a number");
  const model = r["model"] as Record<string, unknown>;
  const fp32 = model["fp32"] as Record<string, unknown> | undefined;
  if (typeof fp32?.["sha256"] !== "string" || typeof fp32["bytes"] !== "number") {
    fail("model.fp32", "{ path, sha256, bytes }");
  }
  const metrics = r["metrics"] as Record<string, unknown>;
  if (typeof metrics["agreement"] !== "number") fail("metrics.agreement", "a number");
}
