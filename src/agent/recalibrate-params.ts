/**
 * A recalibration job's parameters: their defaults, their validation (they
 * come from the CLI, a schedule or the fleet, so every bad value is a USAGE
 * error naming its key) and the gate they ask for.
 */

import { QuantdError, type QuantdErrorCode } from "../errors.ts";
import { isRecord } from "../json.ts";
import type { GateDecision } from "../quant/gate.ts";
import {
  CALIBRATION_METHODS,
  type CalibrationMethod,
  QUANTIZE_PREFERENCES,
  type QuantizePreference,
  REQUESTED_MODES,
  type RequestedMode,
} from "../quant/methods.ts";
import { gateSpecOf, validationSizeFor } from "../quant/split.ts";

/** Default calibration samples of a recalibration. */
export const DEFAULT_RECALIBRATE_SAMPLES = 128;
/** Default held-out validation samples: sized from the default gate (2,752 for 99.5 % at 95 %; see `validationSizeFor`). */
export const DEFAULT_RECALIBRATE_VALIDATION = validationSizeFor(gateSpecOf({}));
/** Default largest accepted candidate/active latency ratio: a candidate more than 5 % slower is refused. */
export const DEFAULT_MAX_LATENCY_RATIO = 1.05;
/** Default largest accepted candidate/active peak-RSS ratio. */
export const DEFAULT_MAX_MEMORY_RATIO = 1.1;
/** Default benchmark: timed runs per model (the bench library's interleaved pairs). */
export const DEFAULT_RECALIBRATE_BENCH_RUNS = 30;

/** Parameters of a recalibration job (as stored with the job; every field optional). */
export interface RecalibrateJobParams {
  /** Calibration samples. @defaultValue {@link DEFAULT_RECALIBRATE_SAMPLES} */
  samples?: number;
  /** Held-out validation samples. @defaultValue sized from the gate ({@link DEFAULT_RECALIBRATE_VALIDATION} for the default one) */
  validationSamples?: number;
  /** Calibration method. @defaultValue the quantizer's default */
  method?: CalibrationMethod;
  /** int8 format. @defaultValue "static" */
  mode?: RequestedMode;
  /** Minimum top-1 agreement with fp32 (a fraction), or the fleet's `{minAgreement, maxAccuracyDrop}`. @defaultValue the quantizer's gate */
  gate?: number | { minAgreement?: number; maxAccuracyDrop?: number };
  /** What must clear the gate: the agreement's lower bound or, explicitly, its point estimate. @defaultValue "bound" */
  decideOn?: GateDecision;
  /** Confidence of the lower bound (a fraction). @defaultValue 0.95 */
  confidence?: number;
  /** Leave near-ties (fp32 top-2 margin below this) out of the gate. @defaultValue 0 */
  ignoreMargin?: number;
  /** Seed of the sample pick. @defaultValue 1 */
  seed?: number;
  /** Sensitivity-fallback rebuilds allowed when the gate is not met (0: none). @defaultValue the quantizer's */
  trialBudget?: number;
  /** @defaultValue {@link DEFAULT_MAX_LATENCY_RATIO} */
  maxLatencyRatio?: number;
  /** @defaultValue {@link DEFAULT_MAX_MEMORY_RATIO} */
  maxMemoryRatio?: number;
  /** Timed benchmark runs per model. @defaultValue {@link DEFAULT_RECALIBRATE_BENCH_RUNS} */
  benchRuns?: number;
  /** Measure peak memory (two child processes). @defaultValue true */
  benchMemory?: boolean;
  /**
   * A candidate slower than the active model: `latency` rejects it (on a board where no int8 form
   * beats fp32, fp32 keeps serving), `size` serves it when it is smaller. @defaultValue "latency"
   */
  prefer?: QuantizePreference;
}

function fail(code: QuantdErrorCode, message: string): never {
  throw new QuantdError(code, message);
}

function fraction(v: unknown, key: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !(v > 0 && v <= 1))
    fail("USAGE", `${key} must be a fraction in (0, 1], got ${JSON.stringify(v)}`);
  return v;
}

/** `v` when it is one of `choices`; `undefined` when absent. @throws USAGE naming `key` otherwise */
function choice<T extends string>(v: unknown, key: string, choices: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !(choices as readonly string[]).includes(v)) {
    fail("USAGE", `${key} must be one of ${choices.join(", ")}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}

function positiveInt(v: unknown, key: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
    fail("USAGE", `${key} must be an integer in 1…${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Validates job parameters (they come from the CLI, a schedule or the fleet).
 *
 * @throws USAGE naming the bad key
 */
export function parseRecalibrateParams(raw: Record<string, unknown>): RecalibrateJobParams {
  const out: RecalibrateJobParams = {};
  const samples = positiveInt(raw["samples"], "samples", 100_000);
  if (samples !== undefined) out.samples = samples;
  const validation = positiveInt(raw["validationSamples"], "validationSamples", 100_000);
  if (validation !== undefined) out.validationSamples = validation;
  const method = choice(raw["method"], "method", CALIBRATION_METHODS);
  if (method !== undefined) out.method = method;
  const mode = choice(raw["mode"], "mode", REQUESTED_MODES);
  if (mode !== undefined) out.mode = mode;
  const gate = raw["gate"];
  if (typeof gate === "number") out.gate = fraction(gate, "gate")!;
  else if (isRecord(gate)) {
    const minAgreement = fraction(gate["minAgreement"], "gate.minAgreement");
    const maxAccuracyDrop = fraction(gate["maxAccuracyDrop"], "gate.maxAccuracyDrop");
    out.gate = {
      ...(minAgreement !== undefined ? { minAgreement } : {}),
      ...(maxAccuracyDrop !== undefined ? { maxAccuracyDrop } : {}),
    };
    // The fleet's gate object may carry how to decide too (`quantd fleet recalibrate` sends one object).
    if (raw["decideOn"] === undefined && gate["decideOn"] !== undefined)
      raw = { ...raw, decideOn: gate["decideOn"] };
    if (raw["confidence"] === undefined && gate["confidence"] !== undefined)
      raw = { ...raw, confidence: gate["confidence"] };
  } else if (gate !== undefined) fail("USAGE", `gate must be a fraction or {minAgreement, maxAccuracyDrop}`);
  const decideOn = raw["decideOn"];
  if (decideOn !== undefined) {
    if (decideOn !== "bound" && decideOn !== "point") {
      fail("USAGE", `decideOn must be bound or point, got ${JSON.stringify(decideOn)}`);
    }
    out.decideOn = decideOn;
  }
  const confidence = fraction(raw["confidence"], "confidence");
  if (confidence !== undefined) {
    if (confidence >= 1) fail("USAGE", "confidence must be below 1");
    out.confidence = confidence;
  }
  const ignoreMargin = raw["ignoreMargin"];
  if (ignoreMargin !== undefined) {
    if (typeof ignoreMargin !== "number" || !(ignoreMargin >= 0 && ignoreMargin < 1)) {
      fail("USAGE", `ignoreMargin must be a margin in [0, 1), got ${JSON.stringify(ignoreMargin)}`);
    }
    out.ignoreMargin = ignoreMargin;
  }
  const seed = raw["seed"];
  if (seed !== undefined) {
    if (typeof seed !== "number" || !Number.isSafeInteger(seed)) fail("USAGE", "seed must be an integer");
    out.seed = seed;
  }
  for (const key of ["maxLatencyRatio", "maxMemoryRatio"] as const) {
    const v = raw[key];
    if (v === undefined) continue;
    if (typeof v !== "number" || !(v > 0 && v < 100)) fail("USAGE", `${key} must be a positive ratio`);
    out[key] = v;
  }
  const budget = raw["trialBudget"];
  if (budget !== undefined) {
    if (typeof budget !== "number" || !Number.isInteger(budget) || budget < 0 || budget > 1000) {
      fail("USAGE", `trialBudget must be an integer in 0…1000, got ${JSON.stringify(budget)}`);
    }
    out.trialBudget = budget;
  }
  const runs = positiveInt(raw["benchRuns"], "benchRuns", 100_000);
  if (runs !== undefined) out.benchRuns = runs;
  const prefer = choice(raw["prefer"], "prefer", QUANTIZE_PREFERENCES);
  if (prefer !== undefined) out.prefer = prefer;
  const memory = raw["benchMemory"];
  if (memory !== undefined) {
    if (typeof memory !== "boolean") fail("USAGE", "benchMemory must be true or false");
    out.benchMemory = memory;
  }
  return out;
}

/** The gate a job's parameters ask for. */
export function gateOf(p: RecalibrateJobParams): ReturnType<typeof gateSpecOf> {
  const g = p.gate;
  const minAgreement = typeof g === "number" ? g : g?.minAgreement;
  const maxAccuracyDrop = typeof g === "object" ? g.maxAccuracyDrop : undefined;
  return gateSpecOf({
    ...(minAgreement !== undefined ? { gate: minAgreement } : {}),
    ...(maxAccuracyDrop !== undefined ? { maxAccuracyDrop } : {}),
    ...(p.confidence !== undefined ? { confidence: p.confidence } : {}),
    ...(p.decideOn !== undefined ? { decideOn: p.decideOn } : {}),
    ...(p.ignoreMargin !== undefined ? { ignoreMargin: p.ignoreMargin } : {}),
  });
}
