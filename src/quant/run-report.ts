/**
 * The last stage of `runQuantization`: the report of a run, from its samples,
 * its candidates and the choice among them; and the error a run that met no
 * gate throws, naming the best candidate.
 */
import pkg from "../../package.json" with { type: "json" };
import { QuantdError } from "../errors.ts";
import type { ModelProto } from "../onnx/types.ts";
import { ORT_VERSION } from "../runtime/ort-session.ts";
import type { BuildSettings, Candidate } from "./candidates.ts";
import { describeFormat, formatFields } from "./candidates.ts";
import { autoDecision, type Choice } from "./choose.ts";
import {
  type LengthCoverage,
  type LengthHistogram,
  type LengthSets,
  lengthHistogram,
  lengthWarnings,
} from "./drift.ts";
import { describeAgreement } from "./gate.ts";
import { defaultQuantizeOptions } from "./plan.ts";
import {
  type CandidateEntry,
  type FileFacts,
  type KeptFp32Node,
  type QuantizeReport,
  REPORT_SCHEMA,
} from "./report.ts";
import type { SampleSplit } from "./samples.ts";
import type { ValidationSummary } from "./validate.ts";

/** Everything the report is made of. */
export interface ReportInputs {
  requestedMode: QuantizeReport["requestedMode"];
  settings: BuildSettings;
  fp32: { model: ModelProto; facts: FileFacts };
  samples: {
    split: SampleSplit;
    source: string;
    validationSource: string;
    maxLength: number;
    /** Token counts and truncations of the calibration and validation samples. */
    calibration: { lengths: readonly number[]; truncated: number };
    validation: { lengths: readonly number[]; truncated: number; summary: ValidationSummary };
    /** Live traffic's token lengths (the agent's counters). */
    live?: LengthHistogram;
  };
  /** The candidates validated, the ones that could not be built, and the ones built but not validated. */
  candidates: {
    built: readonly Candidate[];
    failed: readonly CandidateEntry[];
    notValidated?: readonly CandidateEntry[];
  };
  choice: Choice;
  /** The board profile's reason for its auto candidates. */
  autoWhy?: string;
  timings: { validationMs: number; fallbackMs: number; benchmarkMs: number };
}

/** The report of a run; `totalMs`, `peakRssBytes` and `model.int8` are filled in when it ends. */
export function buildReport(r: ReportInputs): QuantizeReport {
  const chosen = r.choice.chosen;
  const isStatic = chosen.mode === "static";
  const defaults = defaultQuantizeOptions("static");
  const { lengths, coverage } = lengthsOf(r, isStatic);
  const s = r.samples;
  return {
    schema: REPORT_SCHEMA,
    createdAt: new Date().toISOString(),
    outcome: chosen.passed ? "written" : "gate-not-met",
    versions: { quantd: pkg.version, onnxruntime: ORT_VERSION },
    model: { fp32: r.fp32.facts },
    requestedMode: r.requestedMode,
    mode: chosen.mode,
    ...(chosen.method !== undefined ? { method: chosen.method } : {}),
    ...(chosen.format !== undefined ? { format: chosen.format } : {}),
    options: {
      perChannel: r.settings.perChannel,
      reduceRange: r.settings.reduceRange,
      quantizeEmbeddings: defaults.quantizeEmbeddings,
      quantizeAttentionMatMuls: isStatic && defaults.quantizeAttentionMatMuls,
      exclude: [...r.settings.exclude],
    },
    samples: {
      source: s.source,
      validationSource: s.validationSource,
      available: s.split.available,
      calibration: isStatic ? s.split.calibration.length : 0,
      validation: s.split.validation.length,
      truncated: { calibration: isStatic ? s.calibration.truncated : 0, validation: s.validation.truncated },
      maxSequenceLength: s.maxLength,
      split: s.split.line,
      lengths,
    },
    coverage,
    gate: { ...r.settings.gate, passed: chosen.passed, failures: chosen.failures },
    metrics: chosen.metrics,
    ranges: chosen.ranges,
    layerError: chosen.layerError,
    keptFp32: keptNodes(r.fp32.model, r.settings.exclude, chosen),
    skipped: chosen.skipped,
    graph: chosen.graph,
    ...(r.requestedMode === "auto"
      ? {
          auto: {
            why: r.autoWhy ?? "no board profile given: both static forms (uint8 activations) and dynamic",
            decision: autoDecision(r.choice),
          },
        }
      : {}),
    fallback: {
      budget: r.settings.budget,
      trials: chosen.trials,
      methods: chosen.methodTrials,
      tensorMethods: chosen.tensorMethodTrials,
      ...(chosen.biasCorrectionTrial !== undefined ? { biasCorrection: chosen.biasCorrectionTrial } : {}),
    },
    candidates: [
      ...r.candidates.built.map((c) => candidateEntry(c, chosen)),
      ...(r.candidates.notValidated ?? []),
      ...r.candidates.failed,
    ],
    timings: {
      calibrationMs: isStatic ? chosen.calibrationMs : 0,
      quantizationMs: chosen.quantizationMs,
      ...r.timings,
      totalMs: 0,
    },
    peakRssBytes: 0,
    validation: s.validation.summary,
    warnings: [...s.split.warnings, ...lengthWarnings(lengths, coverage)],
  };
}

/** Token lengths of the samples (and live traffic), and what the result covers: calibration (static) or validation. */
function lengthsOf(r: ReportInputs, isStatic: boolean): { lengths: LengthSets; coverage: LengthCoverage } {
  const lengths: LengthSets = {
    calibration: lengthHistogram(r.samples.calibration.lengths),
    validation: lengthHistogram(r.samples.validation.lengths),
    ...(r.samples.live !== undefined ? { live: r.samples.live } : {}),
  };
  const coverage: LengthCoverage = isStatic
    ? { maxTokens: lengths.calibration.max, basis: "calibration" }
    : { maxTokens: lengths.validation.max, basis: "validation" };
  return { lengths, coverage };
}

/** A candidate as the report lists it. */
function candidateEntry(c: Candidate, chosen: Candidate): CandidateEntry {
  return {
    ...formatFields(c),
    agreement: c.metrics.agreement,
    agreementLower: c.metrics.agreementLower,
    meanAbsLogitDiff: c.metrics.meanAbsLogitDiff,
    passed: c.passed,
    ...(c.p50Ms !== undefined ? { p50Ms: c.p50Ms } : {}),
    chosen: c === chosen && c.passed,
    ...(c !== chosen && c.passed ? { note: "slower than the chosen format" } : {}),
    ...(!c.passed ? { note: c.failures.join("; ") } : {}),
  };
}

/** Planner reasons that mean "onnxruntime (or quantd) cannot quantize this node", as opposed to a choice. */
const UNSUPPORTED_REASONS: ReadonlySet<string> = new Set([
  "unsupported-op",
  "unsupported-attributes",
  "non-constant-weight",
  "mask-sentinel",
  "no-range",
  "unknown-op",
]);

/**
 * Every node the result computes in fp32, and why: the user's exclusions, the
 * fallback's, the weight-only ones (int8 on disk), the unsupported.
 */
function keptNodes(fp32: ModelProto, userExclude: readonly string[], c: Candidate): KeptFp32Node[] {
  const opOf = new Map(fp32.graph.node.map((n) => [n.name, n.opType]));
  const kept: KeptFp32Node[] = [];
  for (const name of userExclude) {
    const op = opOf.get(name);
    kept.push({ node: name, ...(op !== undefined ? { opType: op } : {}), reason: "user-exclude" });
  }
  for (const e of c.keptSensitive) {
    kept.push({
      node: e.node,
      opType: e.opType,
      reason: "sensitivity",
      detail:
        e.sharedReaders === undefined
          ? `adds relative error ${e.addedError.toPrecision(3)} (output error ${e.relError.toPrecision(3)})`
          : `its ${e.sharedReaders} readers of one shared weight add relative error ${e.addedError.toPrecision(3)} together (worst output error ${e.relError.toPrecision(3)})`,
    });
  }
  for (const w of c.weightOnly) {
    kept.push({
      node: w.node,
      opType: w.opType,
      reason: "weight-only",
      ...(w.detail ? { detail: w.detail } : {}),
    });
  }
  for (const s of c.skipped) {
    // A reader of a weight another node keeps fp32: the file holds that weight once (plan.ts).
    if (s.reason === "shared-weight") {
      kept.push({
        node: s.node,
        opType: s.opType,
        reason: s.reason,
        ...(s.detail ? { detail: s.detail } : {}),
      });
    } else if (UNSUPPORTED_REASONS.has(s.reason)) {
      kept.push({
        node: s.node,
        opType: s.opType,
        reason: "unsupported",
        detail: s.detail === undefined ? s.reason : `${s.reason}: ${s.detail}`,
      });
    }
  }
  return kept;
}

/** The GATE_NOT_MET error of a run whose best candidate missed the gate (nothing was written at `out`). */
export function gateNotMetError(
  chosen: Candidate,
  minAgreement: number,
  out: string,
  reportPath: string | undefined,
): QuantdError {
  const m = chosen.metrics;
  // A task's own checks (mean cosine, Pearson) fail a candidate whose agreement passes: say which.
  const failedChecks = m.task?.checks.filter((c) => !c.passed) ?? [];
  const checks =
    failedChecks.length > 0
      ? ` (${failedChecks.map((c) => `${c.name} ${c.value.toFixed(4)} is below ${c.min}`).join("; ")})`
      : "";
  return new QuantdError(
    "GATE_NOT_MET",
    `no int8 candidate met the gate of ${(minAgreement * 100).toFixed(2)} % agreement; best: ` +
      `${describeFormat(chosen)} with agreement ${describeAgreement(m)} (mean |logit diff| ${m.meanAbsLogitDiff.toFixed(4)}) ` +
      `after ${chosen.trials.length} fallback trial(s)${checks}; nothing written at ${out}`,
    {
      details: {
        best: {
          mode: chosen.mode,
          ...(chosen.method !== undefined ? { method: chosen.method } : {}),
          ...(chosen.format !== undefined ? { format: chosen.format } : {}),
          n: m.n,
          agreement: m.agreement,
          agreementLower: m.agreementLower,
          maxAbsLogitDiff: m.maxAbsLogitDiff,
          meanAbsLogitDiff: m.meanAbsLogitDiff,
          ...(m.accuracyDrop !== undefined ? { accuracyDrop: m.accuracyDrop } : {}),
          keptFp32: chosen.keptSensitive.map((k) => k.node),
        },
        gate: minAgreement,
        trials: chosen.trials.length,
        failures: chosen.failures,
        ...(reportPath !== undefined ? { report: reportPath } : {}),
      },
    },
  );
}
