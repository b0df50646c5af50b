/**
 * `quantd quantize`: fp32 ONNX in, int8 ONNX out, only if it still agrees with
 * the fp32 model on held-out samples. Thin: parses flags and calls
 * {@link runQuantization}.
 */
import { closeSync, existsSync, openSync, readSync, rmSync } from "node:fs";
import { join } from "node:path";
import { defaultStateDir } from "../../agent/config.ts";
import { recordAutoOutcome } from "../../device/auto-choices.ts";
import { detectDevice } from "../../device/detect.ts";
import { QuantdError } from "../../errors.ts";
import { DEFAULT_CONFIDENCE } from "../../quant/confidence.ts";
import { describeLengths } from "../../quant/drift.ts";
import { describeAgreement, formatCount, type GateDecision, parseGateThreshold } from "../../quant/gate.ts";
import { describeTaskFigures } from "../../quant/task-metrics.ts";
import { CALIBRATION_METHODS, type CalibrationMethod, REQUESTED_MODES } from "../../quant/methods.ts";
import {
  DEFAULT_CALIBRATION_SAMPLES,
  type RunQuantizationOptions,
  runQuantization,
  type SamplePool,
} from "../../quant/pipeline.ts";
import { type ActivationType, defaultQuantizeOptions, type StaticFormat } from "../../quant/plan.ts";
import { type FallbackTrial, QUANTIZE_REPORT_FILE } from "../../quant/report.ts";
import { DEFAULT_TRIAL_BUDGET } from "../../quant/sensitivity.ts";
import {
  copyModelDirFiles,
  createOutputDir,
  findModelFiles,
  type ModelOutput,
  planModelOutput,
} from "../../runtime/model-files.ts";
import { openStore, type Store } from "../../store/store.ts";
import type { Command, ParsedFlags } from "../command.ts";
import { TASK_FLAGS, taskOverrideFlags, THREADS_FLAG, threadsFlag } from "../model-flags.ts";
import {
  expectNoPositionals,
  flagBool,
  flagChoice,
  flagInt,
  flagList,
  flagNumber,
  flagRequired,
  flagString,
} from "../parse.ts";
import { formatBytes, formatMs, formatPercent } from "../render.ts";

const DEFAULT_METHOD: CalibrationMethod = defaultQuantizeOptions("static").method;
const DEFAULT_FORMAT: StaticFormat = defaultQuantizeOptions("static").format;
const FORMATS: readonly StaticFormat[] = ["qdq", "fused"];
const ACTIVATIONS: readonly ActivationType[] = ["uint8", "int8"];
const DECISIONS: readonly GateDecision[] = ["bound", "point"];

const SQLITE_MAGIC = "SQLite format 3\0";

/** True when `path` is a SQLite database (by its header, so any file name works). */
function isSqliteFile(path: string): boolean {
  if (path.endsWith(".db") || path.endsWith(".sqlite")) return true;
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    const head = Buffer.alloc(16);
    return readSync(fd, head, 0, 16, 0) === 16 && head.toString("latin1") === SQLITE_MAGIC;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The store's sample pool as the pipeline's {@link SamplePool}. */
function poolOf(store: Store, name: string): SamplePool {
  return {
    name,
    count: () => store.samples.count(),
    pickDisjoint: (nCalib, nVal, seed) => store.samples.pickDisjoint(nCalib, nVal, seed),
  };
}

/** A confidence level as users write it: `95` or `0.95`, strictly between 0 and 1 as a fraction. @throws USAGE */
function parseConfidence(raw: number): number {
  const c = raw > 1 ? raw / 100 : raw;
  if (!(c > 0 && c < 1))
    throw new QuantdError("USAGE", `--confidence must be between 0 and 100 %, exclusive, got ${raw}`);
  return c;
}

/** The `quantize` command. */
export const quantizeCommand: Command = {
  name: "quantize",
  summary: "convert an fp32 BERT to int8, validated against fp32 on held-out samples",
  usage:
    "--model FP32.onnx --calib SAMPLES --out INT8.onnx|DIR [--mode static|dynamic|auto] [--method M] [--format qdq|fused] " +
    "[--samples N] [--per-tensor] [--reduce-range] [--exclude NODE…] [--gate AGREEMENT] [--gate-on bound|point] [--report FILE]",
  description: `SAMPLES is a TSV (label<TAB>sentence with a header; the label may be empty) or a quantd SQLite
store (.db, as quantd collect fills it). From a TSV --samples rows spread over its lengths calibrate and
every other row is held out for validation (at most --val-samples); from a store both sets are a seeded,
length-stratified disjoint pick. Calibration needs tens of samples, validation hundreds, so when rows
are scarce the default split gives validation the rows and calibrates on fewer (down to 32); the split
is explained in one line. --mode dynamic calibrates nothing, so every row validates. Samples longer than the model allows are truncated and counted in the report.

The int8 model is validated against fp32 on the held-out samples (top-1 agreement with its one-sided
Clopper–Pearson lower bound, logit error, flips on near-ties vs confident inputs, and accuracy when
labels exist). The gate passes when the lower bound at --confidence clears --gate, printed as
"agreement 99.8 % (≥ 99.3 % at 95 %, n = 1,024)"; certifying 99.5 % at 95 % takes at least 598 held-out
samples with no flip, and a smaller set fails at once saying how many it takes. --gate-on point decides
on the point estimate instead (a small set then passes by luck). fp32 and static int8 run in batches of
samples of similar length; dynamic int8 (its ranges are per batch) both in the batches serving forms,
samples of one token length, and alone, as an idle server runs it: a sample agrees only when it agrees in
both, and the flips line gives each form's count. A candidate
stops early once it can no longer pass, or, on a set at least twice what the gate needs, once it has
passed at one of a few looks (the looks share the 5 %, 80 % of it kept for the last, so the verdict still
holds at 95 %); --full-validation runs every sample. When the gate is not met (static; dynamic goes
straight to nodes kept in fp32), the other calibration methods (percentile, mse, entropy) are tried
first, then a method per tensor (each tensor's range from the method under which the nodes reading it
add the least error), then the best of those with its biases
corrected (each quantized MatMul's mean output error on the calibration samples taken off its bias, layer by
layer in graph order; a bias shared by several layers, as ALBERT's, by its readers' mean), as they cost no
bytes; then nodes are kept in fp32, a
few more per trial, the best estimated gain (the error a node adds; the readers of a shared weight go fp32
together, as one choice: their errors summed, the weight's bytes once) per byte first, until the gate holds
or --trials rebuilds are spent; the summary says what each trial bought (a trial that did not help is
reverted: its nodes go back to int8). Nodes are priced at their fp32 bytes (a node with no weights as one
256 × 256 projection). Once the gate holds, rebuilds left put the kept nodes back in int8 one at a time, the
most bytes first, each drop kept only when the gate still holds. If it cannot be met the command
fails with GATE_NOT_MET and writes nothing at --out (the report, if asked for, is still written).

--out DIR (an existing directory, a path ending in /, or one without .onnx) makes a self-contained
model directory, as Optimum writes one: the int8 model (DIR/model.onnx), the model's tokenizer and
config files copied beside it, and the report (DIR/quantize-report.json unless --report says
otherwise). classify, eval, bench and the agent then take that directory with no other flag. A file
in a directory that does not exist yet (--out new/int8.onnx) gets the tokenizer and config files
beside it too, so they take the file with no other flag; its report only with --report. Neither
--out nor --report may name a file the run reads (the model, its external data, tokenizer and config
files, the samples, the --validate file): that is a usage error, and nothing is overwritten.

--mode auto builds every int8 form that can be the fastest on the detected board (quantd device): static
int8 in both formats (qdq, fused) with uint8 activations (U8S8), also with int8 activations (S8S8) on
arm64, and dynamic int8; it times each at sequence 128 and validates them fastest first, stopping at
the first that passes (a slower one could not be chosen; the report says "not validated: <format>
passed first"); --validate-all validates every one, for each one's figures. The report says why these
candidates and why the winner won.

The model is checked before any sample is read: a float16 export is refused (QUANT_UNSUPPORTED, naming a
half-precision tensor: quantize the fp32 export), and so is a graph quantd cannot run or rewrite safely
(QUANT_UNSUPPORTED for a custom-domain op onnxruntime has no kernel for or an opset 11/12 Softmax whose
meaning opset 13 changes, MODEL_INVALID for a node reading a tensor nothing makes), naming the node and its
op; nothing is written at --out.
Graphs onnxruntime's optimizers saved (FusedMatMul, FusedGemm, Attention, EmbedLayerNormalization, …)
and external-data models (model.onnx + model.onnx_data) are taken as they are; the summary's graph:
line says which contrib ops were lowered to the standard ops they fuse.`,
  flags: [
    { name: "model", type: "string", value: "FP32.onnx", description: "the fp32 model (or its directory)" },
    { name: "calib", type: "string", value: "SAMPLES", description: "samples: a TSV file or a .db store" },
    {
      name: "out",
      type: "string",
      value: "INT8.onnx|DIR",
      description: "where the int8 model is written (a directory: a self-contained model directory)",
    },
    {
      name: "mode",
      type: "string",
      value: "MODE",
      description: "static (QDQ, calibrated), dynamic (no calibration) or auto",
      default: "static",
    },
    {
      name: "method",
      type: "string",
      value: "METHOD",
      description: `static calibration method: ${CALIBRATION_METHODS.join(", ")}`,
      default: DEFAULT_METHOD,
    },
    {
      name: "format",
      type: "string",
      value: "FORMAT",
      description:
        "how static MatMuls are written: qdq (standard ONNX QuantizeLinear/DequantizeLinear, any runtime) or " +
        "fused (onnxruntime's MatMulIntegerToFloat with the bias folded in: faster, onnxruntime only)",
      default: DEFAULT_FORMAT,
    },
    {
      name: "activations",
      type: "string",
      value: "TYPE",
      description:
        "static activation type: uint8 (U8S8 with the int8 weights; onnxruntime's fast pairing on x86 and arm64) " +
        "or int8 (S8S8: for arm64 boards where it times faster; slow on x86)",
      default: "uint8",
    },
    {
      name: "samples",
      type: "string",
      value: "N",
      description: "calibration samples",
      default: String(DEFAULT_CALIBRATION_SAMPLES),
    },
    {
      name: "val-samples",
      type: "string",
      value: "M",
      description: "held-out validation samples (taken after the calibration ones)",
      default: "every remaining row",
    },
    {
      name: "validate",
      type: "string",
      value: "SAMPLES",
      description: "validate on this file instead of rows held out of --calib",
    },
    {
      name: "per-tensor",
      type: "boolean",
      description: "one weight scale per tensor instead of per channel",
    },
    { name: "reduce-range", type: "boolean", description: "7-bit activations (x86 without VNNI)" },
    {
      name: "exclude",
      type: "string",
      value: "NODE",
      multiple: true,
      description: "node names to keep in fp32 (comma-separated or repeated)",
    },
    {
      name: "gate",
      type: "string",
      value: "AGREEMENT",
      description: "minimum top-1 agreement with fp32, in % (or a fraction)",
      default: "99.5",
    },
    {
      name: "gate-on",
      type: "string",
      value: "WHAT",
      description:
        "what must clear --gate: bound (the agreement's lower confidence bound) or point (the measured agreement)",
      default: "bound",
    },
    {
      name: "confidence",
      type: "string",
      value: "LEVEL",
      description: "confidence of the lower bound, in % (or a fraction)",
      default: String(DEFAULT_CONFIDENCE * 100),
    },
    {
      name: "full-validation",
      type: "boolean",
      description:
        "validate every held-out sample: no early stop when the verdict is already certain (the bound is then the plain one, not corrected for looks)",
    },
    {
      name: "validate-all",
      type: "boolean",
      description:
        "--mode auto: validate every candidate, not only until the fastest that passes (each one's figures in the report)",
    },
    {
      name: "ignore-margin",
      type: "string",
      value: "MARGIN",
      description:
        "leave near-ties out of the gate: samples where fp32's top-2 softmax margin is below MARGIN (e.g. 0.01)",
      default: "0 (count every sample)",
    },
    {
      name: "max-accuracy-drop",
      type: "string",
      value: "POINTS",
      description: "also require accuracy to drop by at most this many points (labelled samples only)",
    },
    {
      name: "trials",
      type: "string",
      value: "N",
      description: "fallback rebuilds allowed per format",
      default: String(DEFAULT_TRIAL_BUDGET),
    },
    {
      name: "seed",
      type: "string",
      value: "N",
      description: "seed of the store's sample pick (same seed, same pool: same samples)",
      default: "1",
    },
    { name: "report", type: "string", value: "REPORT.json", description: "write the JSON report here" },
    {
      name: "state-dir",
      type: "string",
      value: "DIR",
      description:
        "--mode auto records the winner with the board profile here (`quantd device` shows it); default: the agent's state directory, when it exists",
    },
    {
      name: "tokenizer",
      type: "string",
      value: "DIR",
      description: "tokenizer directory (default: beside the model)",
    },
    THREADS_FLAG,
    ...TASK_FLAGS,
    { name: "json", type: "boolean", description: "print the report (or the error) as JSON on stdout" },
  ],
  async run(ctx) {
    expectNoPositionals(ctx.positionals);
    const { opts, output } = quantizeOptions(ctx.flags);
    const json = flagBool(ctx.flags, "json");
    if (!json) opts.onProgress = (line) => ctx.err(line);
    const { result, copied } = await quantizeInto(opts, output);
    const board = recordAutoWinner(flagString(ctx.flags, "state-dir"), opts.model, result.report, (w) =>
      ctx.err(`warning: ${w}`),
    );
    if (json) {
      ctx.out(JSON.stringify(result.report));
      return 0;
    }
    ctx.out(`wrote ${result.out}`);
    for (const line of summaryLines(result.report, opts.report)) ctx.out(line);
    for (const w of result.report.warnings) ctx.err(`warning: ${w}`);
    ctx.out(timingLine(result.report));
    if (board !== undefined) ctx.out(`  board profile: the winner is recorded in ${board}`);
    if (copied.length > 0) ctx.out(`  beside it: ${copied.join(", ")}`);
    if (opts.report !== undefined) ctx.out(`  report: ${opts.report}`);
    return 0;
  },
};

type QuantizationResult = Awaited<ReturnType<typeof runQuantization>>;
type QuantizationReport = QuantizationResult["report"];
/** The pipeline's options with the samples still named by their path (a file, or a store to open). */
type FileOptions = RunQuantizationOptions & { calib: string };

/** The pipeline's options and where the model goes, from the flags. @throws USAGE on a bad flag value */
function quantizeOptions(f: ParsedFlags): { opts: FileOptions; output: ModelOutput } {
  const calib = flagRequired(f, "calib");
  const output = planModelOutput(flagRequired(f, "out"));
  const opts: FileOptions = {
    model: flagRequired(f, "model"),
    calib,
    out: output.model,
    mode: flagChoice(f, "mode", REQUESTED_MODES, "static"),
    method: flagChoice<CalibrationMethod>(f, "method", CALIBRATION_METHODS, DEFAULT_METHOD),
    format: flagChoice(f, "format", FORMATS, DEFAULT_FORMAT),
    activations: flagChoice(f, "activations", ACTIVATIONS, "uint8"),
    decideOn: flagChoice(f, "gate-on", DECISIONS, "bound"),
    confidence: parseConfidence(flagNumber(f, "confidence", { min: 0, max: 100 }, DEFAULT_CONFIDENCE * 100)),
    perChannel: !flagBool(f, "per-tensor"),
    reduceRange: flagBool(f, "reduce-range"),
    exclude: flagList(f, "exclude"),
    gate: parseGateThreshold(flagNumber(f, "gate", { min: 0, max: 100 }, 99.5)),
    trialBudget: flagInt(f, "trials", { min: 0, max: 1000 }, DEFAULT_TRIAL_BUDGET),
  };
  const samples = flagInt(f, "samples", { min: 1 });
  if (samples !== undefined) opts.samples = samples;
  const valSamples = flagInt(f, "val-samples", { min: 1 });
  if (valSamples !== undefined) opts.validationSamples = valSamples;
  const ignoreMargin = flagNumber(f, "ignore-margin", { min: 0, max: 1 });
  if (ignoreMargin !== undefined && ignoreMargin > 0) opts.ignoreMargin = ignoreMargin;
  if (flagBool(f, "full-validation")) opts.earlyStop = false;
  if (flagBool(f, "validate-all")) opts.validateAll = true;
  const validate = flagString(f, "validate");
  if (validate !== undefined) opts.validate = validate;
  const drop = flagNumber(f, "max-accuracy-drop", { min: 0, max: 100 });
  if (drop !== undefined) opts.maxAccuracyDrop = drop / 100;
  const report =
    flagString(f, "report") ?? (output.asDirectory ? join(output.dir, QUANTIZE_REPORT_FILE) : undefined);
  if (report !== undefined) opts.report = report;
  const tokenizer = flagString(f, "tokenizer");
  if (tokenizer !== undefined) opts.tokenizerDir = tokenizer;
  opts.seed = flagInt(f, "seed", { min: 0 }, 1);
  opts.task = taskOverrideFlags(f);
  opts.threads = threadsFlag(f);
  // The candidates worth timing depend on the CPU's int8 kernels: the board profile lists them.
  if (opts.mode === "auto") opts.autoCandidates = detectDevice().profile.auto;
  return { opts, output };
}

/**
 * Runs the pipeline into the output: samples from a store (disjoint, length-stratified picks) or a file,
 * and the model directory's other files copied beside a model written into a directory. A directory this
 * run created is removed again when it fails.
 *
 * @throws FILE_NOT_FOUND when the samples file does not exist; whatever the pipeline throws
 */
async function quantizeInto(
  opts: FileOptions,
  output: ModelOutput,
): Promise<{ result: QuantizationResult; copied: string[] }> {
  const calib = opts.calib;
  let store: Store | undefined;
  if (existsSync(calib) && isSqliteFile(calib)) {
    store = await openStore(calib, { readonly: true });
  } else if (!existsSync(calib)) {
    throw new QuantdError("FILE_NOT_FOUND", `samples file ${calib} does not exist`, {
      details: { path: calib },
    });
  }
  // A new directory exists only once the model is in it: any failure removes it again.
  let createdDir: string | undefined;
  try {
    if (output.newDir) createdDir = createOutputDir(output.dir);
    const result = await runQuantization(
      store === undefined ? opts : { ...opts, calib: poolOf(store, calib) },
    );
    const copied =
      output.asDirectory || output.newDir
        ? copyModelDirFiles(findModelFiles(opts.model, opts.tokenizerDir), output.dir)
        : [];
    return { result, copied };
  } catch (err) {
    if (createdDir !== undefined) rmSync(createdDir, { recursive: true, force: true });
    throw err;
  } finally {
    store?.close();
  }
}

/**
 * `--mode auto`: records the winner and why it won with the board profile in
 * the agent's state directory (`stateDir`, else `$QUANTD_STATE_DIR`, else the
 * agent's default directory when it exists: a bare CLI run on a machine with
 * no agent writes nothing there). A failure to record is a warning: the
 * model is written either way.
 */
function recordAutoWinner(
  stateDir: string | undefined,
  model: string,
  report: QuantizationReport,
  warn: (line: string) => void,
): string | undefined {
  if (report.auto === undefined) return undefined;
  const given = stateDir ?? process.env["QUANTD_STATE_DIR"];
  const dir = given ?? defaultStateDir(process.env);
  if (given === undefined && !existsSync(dir)) return undefined;
  try {
    return recordAutoOutcome(dir, model, report, detectDevice().profile);
  } catch (err) {
    warn(`the auto winner was not recorded in ${dir}: ${(err as Error).message}`);
    return undefined;
  }
}

/** A change in points, signed: `+0.40 pt`. */
function points(x: number): string {
  return `${x >= 0 ? "+" : ""}${(x * 100).toFixed(2)} pt`;
}

/**
 * Flips split by fp32's margin, where the task has one; otherwise (multi-label, embeddings, regression:
 * no top-2 margin is measured) the count of trials that differ, without claiming there were no near-ties.
 */
function flipsLine(m: QuantizationReport["metrics"]): string {
  const diff = `mean |logit diff| ${m.meanAbsLogitDiff.toFixed(4)}`;
  // Dynamic int8: a sample counts as a flip when it flips in its serving batch or alone.
  const forms =
    m.servingForms === undefined
      ? ""
      : ` (dynamic: ${m.servingForms.batchedFlips} in serving's batches, ${m.servingForms.aloneFlips} alone)`;
  if (m.margin !== undefined) {
    return (
      `  flips: ${m.margin.nearTieFlips} on near-ties (fp32 margin < ${m.margin.threshold}, ${m.margin.nearTies} such samples), ` +
      `${m.margin.confidentFlips} on confident inputs${forms}; ${diff}`
    );
  }
  return `  differ: ${formatCount(m.disagreements)} of ${formatCount(m.n)} ${m.task?.unit ?? "sample"}s; ${diff}`;
}

/** Nodes left fp32 because quantd has no int8 form for them there, counted by op; the report names each. */
function unsupportedLine(r: QuantizationReport, reportPath: string | undefined): string | undefined {
  const byOp = new Map<string, number>();
  for (const k of r.keptFp32) {
    if (k.reason === "unsupported") byOp.set(k.opType ?? "?", (byOp.get(k.opType ?? "?") ?? 0) + 1);
  }
  if (byOp.size === 0) return undefined;
  const ops = [...byOp].map(([op, n]) => `${n} ${op}`).join(", ");
  const where =
    reportPath === undefined
      ? "--report FILE lists each with its reason"
      : "the report lists each with its reason";
  return `  kept in fp32, no int8 form for them here: ${ops} (${where})`;
}

/**
 * What quantd changed in the graph before quantizing it (an opset upgrade,
 * contrib ops lowered to the standard ops they fuse), counted by op; the
 * report's `graph` section names each node.
 */
function graphLine(r: QuantizationReport): string | undefined {
  const g = r.graph;
  if (g === undefined) return undefined;
  const parts: string[] = [];
  if (g.opset.to !== g.opset.from) parts.push(`opset ${g.opset.from} → ${g.opset.to}`);
  const byOp = new Map<string, { n: number; into: string }>();
  for (const l of g.lowered) {
    const seen = byOp.get(l.opType);
    byOp.set(l.opType, { n: (seen?.n ?? 0) + 1, into: seen?.into ?? l.into });
  }
  if (byOp.size > 0) {
    parts.push(`lowered ${[...byOp].map(([op, { n, into }]) => `${n} ${op} (→ ${into})`).join(", ")}`);
  }
  return parts.length === 0 ? undefined : `  graph: ${parts.join("; ")}`;
}

/** The human summary under `wrote …`: the model, the split, the gate's figures, what fallback bought. */
function summaryLines(r: QuantizationReport, reportPath?: string): string[] {
  const m = r.metrics;
  const variant = [
    r.mode,
    r.method,
    r.format,
    r.candidates.find((c) => c.chosen)?.activations === "int8" ? "s8s8" : undefined,
  ].filter((x) => x !== undefined);
  const out = [
    `  ${variant.join("/")}, ${formatBytes(r.model.int8?.bytes ?? 0)} (${formatPercent(r.model.sizeRatio ?? 0)} of fp32)`,
    `  split: ${r.samples.split ?? `${r.samples.calibration} calibrate, ${r.samples.validation} validate`}`,
    `  agreement ${describeAgreement(m)}` +
      (m.accuracyDrop !== undefined
        ? `, accuracy ${formatPercent(m.accuracyCandidate ?? 0)} (fp32 ${formatPercent(m.accuracyReference ?? 0)})`
        : "") +
      `, max |logit diff| ${m.maxAbsLogitDiff.toFixed(4)}`,
    flipsLine(m),
  ];
  if (m.task !== undefined) out.push(`  ${describeTaskFigures(m.task)}`);
  if (r.auto !== undefined) out.push(`  auto: ${r.auto.decision}`);
  const validation = validationLine(r);
  if (validation !== undefined) out.push(validation);
  out.push(...fallbackLines(r));
  const lengths = r.samples.lengths;
  if (lengths !== undefined) {
    out.push(
      `  lengths: calibration ${describeLengths(lengths.calibration)}; validation ${describeLengths(lengths.validation)}`,
    );
  }
  const graph = graphLine(r);
  if (graph !== undefined) out.push(graph);
  const sensitive = r.keptFp32.filter((k) => k.reason === "sensitivity").map((k) => k.node);
  if (sensitive.length > 0) out.push(`  kept in fp32 for accuracy: ${sensitive.join(", ")}`);
  const unsupported = unsupportedLine(r, reportPath);
  if (unsupported !== undefined) out.push(unsupported);
  const shared = r.keptFp32.filter((k) => k.reason === "shared-weight").map((k) => k.node);
  if (shared.length > 0) out.push(`  kept in fp32 with the weight they share: ${shared.join(", ")}`);
  const weightOnly = r.keptFp32.filter((k) => k.reason === "weight-only").length;
  if (weightOnly > 0) {
    out.push(`  weight-only: ${weightOnly} MatMul(s) read an int8 stack of matrices and compute in fp32`);
  }
  if (r.samples.truncated.calibration + r.samples.truncated.validation > 0) {
    out.push(
      `  truncated to ${r.samples.maxSequenceLength} tokens: ${r.samples.truncated.calibration} calibration, ` +
        `${r.samples.truncated.validation} validation samples`,
    );
  }
  return out;
}

/** How validation went: its time, batches, cached fp32 logits, looks and early stops. */
function validationLine(r: QuantizationReport): string | undefined {
  const v = r.validation;
  if (v === undefined) return undefined;
  const stops = [
    v.earlyStops.passed > 0 ? `${v.earlyStops.passed} passed early` : "",
    v.earlyStops.failed > 0 ? `${v.earlyStops.failed} failed early` : "",
  ].filter((x) => x !== "");
  return (
    `  validation: ${formatMs(r.timings.validationMs)}, batches of ${v.batchSize} by length, ` +
    `fp32 logits ${v.reference.computed} computed + ${v.reference.fromCache} cached` +
    (v.looks.length > 1 ? `, looks at ${v.looks.join(", ")}` : "") +
    (v.aloneSamples !== undefined ? `, dynamic: ${v.aloneSamples} samples run again alone` : "") +
    (stops.length > 0 ? ` (${stops.join(", ")})` : "")
  );
}

/**
 * What each fallback (another calibration method, a method per tensor, the
 * bias correction, nodes kept in fp32, nodes put back in int8 by the size
 * phase) bought: one summary line each. Exported for its test.
 */
export function fallbackLines(r: QuantizationReport): string[] {
  const out: string[] = [];
  for (const t of r.fallback.methods ?? []) {
    out.push(
      `  fallback: calibrated with ${t.method} instead (no bytes, ${formatMs(t.ms)}): ` +
        `agreement ${points(t.bought.agreement)}, bound ${points(t.bought.agreementLower)}${t.passed ? ", gate met" : ""}`,
    );
  }
  for (const t of r.fallback.tensorMethods ?? []) {
    const methods = [...new Set(t.tensors.map((x) => x.method))].join("/");
    out.push(
      `  fallback: ${t.tensors.length} tensor(s) calibrated with ${methods} instead (no bytes, ${formatMs(t.ms)}): ` +
        `agreement ${points(t.bought.agreement)}, bound ${points(t.bought.agreementLower)}${t.passed ? ", gate met" : ""}`,
    );
  }
  const b = r.fallback.biasCorrection;
  if (b !== undefined) {
    out.push(
      `  fallback: ${b.biases} bias(es) corrected by their mean output error (${b.readers} MatMuls` +
        `${b.shared > 0 ? `, ${b.shared} shared bias(es) by their readers' mean` : ""}; no bytes, ${formatMs(b.ms)}): ` +
        `mean output bias ${b.meanBiasBefore.toPrecision(2)} → ${b.meanBiasAfter.toPrecision(2)}, ` +
        `agreement ${points(b.bought.agreement)}, bound ${points(b.bought.agreementLower)}` +
        `${b.passed ? ", gate met" : b.used === true ? "" : "; did not help: not used"}`,
    );
  }
  for (const [i, t] of r.fallback.trials.entries()) {
    if (t.bought === undefined) continue;
    out.push(
      `  fallback trial ${i + 1}: ${trialText(t, t.bought.bytes)}: ` +
        `agreement ${points(t.bought.agreement)}, bound ${points(t.bought.agreementLower)}${trialVerdict(t)}`,
    );
  }
  return out;
}

/** What a fallback trial changed and what it paid or saved: `kept A, B in fp32 (+1.0 MB)`. */
function trialText(t: FallbackTrial, bytes: number): string {
  const tried = t.reverted === true;
  if (t.dropped !== undefined) {
    return `${tried ? "tried" : "put"} ${t.dropped.join(", ")} back in int8 (−${formatBytes(-bytes)})`;
  }
  return `${tried ? "tried" : "kept"} ${(t.added ?? []).join(", ")} in fp32 (+${formatBytes(bytes)})`;
}

/** What came of a fallback trial: the size phase keeps a drop only while the gate holds; a trial that did not help is reverted. */
function trialVerdict(t: FallbackTrial): string {
  if (t.dropped !== undefined) return t.passed ? ", gate still met" : "; gate missed: stays fp32";
  if (t.passed) return ", gate met";
  return t.reverted === true ? "; did not help: reverted to int8" : "";
}

/** Where the time and memory went. */
function timingLine(r: QuantizationReport): string {
  return (
    `  ${r.mode === "dynamic" ? "no calibration (dynamic)" : `calibration ${formatMs(r.timings.calibrationMs)}`}, quantization ${formatMs(r.timings.quantizationMs)}, ` +
    `total ${formatMs(r.timings.totalMs)}, peak RSS ${formatBytes(r.peakRssBytes)}`
  );
}
