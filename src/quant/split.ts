/**
 * How many samples calibrate and how many validate, and the gate they are
 * sized for. Pure arithmetic (no onnxruntime), so the agent can size a job's
 * pick without loading the quantizer.
 */
import { QuantdError } from "../errors.ts";
import { clopperPearsonLower, DEFAULT_CONFIDENCE, samplesToCertify } from "./confidence.ts";
import {
  DEFAULT_GATE_AGREEMENT,
  formatConfidence,
  type GateDecision,
  type GateSpec,
  lookLevels,
} from "./gate.ts";

/** Default calibration sample count. */
export const DEFAULT_CALIBRATION_SAMPLES = 128;

/** Fewest calibration samples the default split keeps when it gives rows to validation. */
export const MIN_CALIBRATION_SAMPLES = 32;

/** What a split is asked for; `undefined` counts mean "the default". */
export interface SplitRequest {
  /** Calibration samples. @defaultValue {@link DEFAULT_CALIBRATION_SAMPLES}, fewer when rows are scarce */
  calibration?: number;
  /** Validation samples. @defaultValue every sample left after calibration */
  validation?: number;
  /** Held-out samples the gate needs to be certifiable at all (0 flips); 1 when it decides on the point estimate. */
  needed: number;
  /** The gate as words for the split's line (`99.5 % at 95 %`). */
  gateWords: string;
  /** Nothing calibrates (dynamic int8 computes its ranges at run time): every row may validate. */
  noCalibration?: boolean;
}

/** Sizes of a split, and the one line that explains them. */
export interface SplitPlan {
  calibration: number;
  validation: number;
  /** `4,000 rows: 128 calibrate, 3,872 validate (…)`. */
  line: string;
  /** Set when the validation set cannot certify the gate even with no flip. */
  tooFew?: { have: number; needed: number };
}

/**
 * Sizes calibration and validation from `available` rows. Calibration needs
 * tens of samples, validation hundreds (certifying 99.5 % at 95 % takes 598
 * held-out samples with no flip), so when rows are scarce the default gives
 * validation the rows and calibration what is left, down to
 * {@link MIN_CALIBRATION_SAMPLES}. Explicit counts are honoured as far as the
 * rows allow (one row at least is always held out).
 */
export function planSplit(available: number, req: SplitRequest, unit = "rows"): SplitPlan {
  if (req.noCalibration === true) return planValidationOnly(available, req, unit);
  const full = req.calibration ?? DEFAULT_CALIBRATION_SAMPLES;
  // At least a quarter is always held out: a gate checked on calibration samples would prove nothing.
  const quarter = Math.max(1, Math.floor(available / 4));
  let calibration: number;
  let why = "";
  if (req.calibration === undefined) {
    calibration = Math.min(full, available - Math.max(req.needed, quarter));
    if (calibration < Math.min(MIN_CALIBRATION_SAMPLES, full)) {
      calibration = Math.min(MIN_CALIBRATION_SAMPLES, full, available - quarter);
    }
    if (calibration < full) why = `calibration cut from ${full} to leave validation the rows; `;
  } else if (full >= available) {
    calibration = available - quarter;
    why = `--samples ${full} leaves no row to validate on; `;
  } else calibration = full;
  calibration = Math.max(1, calibration);
  const left = available - calibration;
  const validation = Math.min(left, req.validation ?? left);
  const which =
    req.validation === undefined || validation === left ? "every remaining row" : `${validation} asked`;
  const certify = `${req.gateWords} needs ≥ ${req.needed.toLocaleString("en-US")}`;
  const plan: SplitPlan = {
    calibration,
    validation,
    line:
      `${available.toLocaleString("en-US")} ${unit}: ${calibration.toLocaleString("en-US")} calibrate, ` +
      `${validation.toLocaleString("en-US")} validate (${why}${which}; ${certify})`,
  };
  if (validation < req.needed) plan.tooFew = { have: validation, needed: req.needed };
  return plan;
}

/** {@link planSplit} when nothing calibrates: every row (or as many as asked) validates. */
function planValidationOnly(available: number, req: SplitRequest, unit: string): SplitPlan {
  const validation = Math.min(available, req.validation ?? available);
  const which = validation === available ? "every row" : `${validation} asked`;
  const plan: SplitPlan = {
    calibration: 0,
    validation,
    line:
      `${available.toLocaleString("en-US")} ${unit}: 0 calibrate (dynamic int8 needs no calibration), ` +
      `${validation.toLocaleString("en-US")} validate (${which}; ${req.gateWords} needs ≥ ${req.needed.toLocaleString("en-US")})`,
  };
  if (validation < req.needed) plan.tooFew = { have: validation, needed: req.needed };
  return plan;
}

/** The gate a run asked for. */
export function gateSpecOf(opts: {
  gate?: number;
  maxAccuracyDrop?: number;
  confidence?: number;
  decideOn?: GateDecision;
  ignoreMargin?: number;
}): GateSpec {
  const gate: GateSpec = {
    minAgreement: opts.gate ?? DEFAULT_GATE_AGREEMENT,
    confidence: opts.confidence ?? DEFAULT_CONFIDENCE,
    decideOn: opts.decideOn ?? "bound",
  };
  if (opts.maxAccuracyDrop !== undefined) gate.maxAccuracyDrop = opts.maxAccuracyDrop;
  if (opts.ignoreMargin !== undefined && opts.ignoreMargin > 0) gate.ignoreMargin = opts.ignoreMargin;
  return gate;
}

/** The split request for a gate: how many held-out samples it needs to be certifiable at all. */
export function splitRequestOf(gate: GateSpec, calibration?: number, validation?: number): SplitRequest {
  const confidence = gate.confidence ?? DEFAULT_CONFIDENCE;
  const point = gate.decideOn === "point";
  const req: SplitRequest = {
    needed: point ? 1 : samplesToCertify(gate.minAgreement, confidence),
    gateWords: point
      ? `the ${(gate.minAgreement * 100).toFixed(2)} % gate on the point estimate`
      : `${Number((gate.minAgreement * 100).toFixed(3))} % at ${formatConfidence(confidence)}`,
  };
  if (calibration !== undefined) req.calibration = calibration;
  if (validation !== undefined) req.validation = validation;
  return req;
}

/**
 * Fails before any work when the validation set is too small for the gate to
 * pass even with no flip: hours of calibration would end in the same verdict.
 * `have` counts the trials of the gate's bound: samples, or another task's
 * tokens or label decisions (`unit`).
 *
 * @throws GATE_NOT_MET naming the trials needed
 */
export function assertCertifiable(gate: GateSpec, have: number, needed: number, unit = "sample"): void {
  if (gate.decideOn === "point" || have >= needed) return;
  const confidence = gate.confidence ?? DEFAULT_CONFIDENCE;
  throw new QuantdError(
    "GATE_NOT_MET",
    `${have.toLocaleString("en-US")} held-out ${unit}s cannot certify ${(gate.minAgreement * 100).toFixed(2)} % agreement at ` +
      `${formatConfidence(confidence)} even with no flip: it takes ${needed.toLocaleString("en-US")}; give more ` +
      "samples (or a --validate file), lower the gate, or decide on the point estimate (--gate-on point)",
    { details: { validation: have, needed, gate: gate.minAgreement, confidence } },
  );
}

/**
 * Validation samples a device should hold out for a gate: enough that a
 * candidate flipping half as often as the gate allows still certifies it
 * (2,752 for 99.5 % at 95 %), so a good candidate is not refused for a few
 * unlucky near-ties. Rounded up to a multiple of 64. The point-estimate gate
 * keeps the former 256.
 */
export function validationSizeFor(gate: GateSpec): number {
  if (gate.decideOn === "point") return 256;
  const g = gate.minAgreement;
  const confidence = gate.confidence ?? DEFAULT_CONFIDENCE;
  if (g >= 1) return Number.POSITIVE_INFINITY;
  // At the level the validator will use: early-stop looks spend the confidence among them.
  const certifies = (n: number): boolean =>
    clopperPearsonLower(
      n - Math.ceil((n * (1 - g)) / 2),
      n,
      lookLevels(confidence, planLooks(n, gate, true).length).final,
    ) >= g;
  let n = 64;
  while (!certifies(n) && n < 1_000_000) n += 64;
  return n;
}

/**
 * Prefix sizes at which to check the gate: doubling from the least that can
 * certify it, ending at `n`. One look (at `n`) when the set is under twice
 * that, or when the gate decides on the point estimate.
 */
export function planLooks(n: number, gate: GateSpec, earlyStop: boolean): number[] {
  if (!earlyStop || gate.decideOn === "point" || n <= 0) return [n];
  const confidence = gate.confidence ?? DEFAULT_CONFIDENCE;
  for (let k = 2; k <= 8; k++) {
    const first = samplesToCertify(gate.minAgreement, lookLevels(confidence, k).interim);
    if (n < 2 * first) return [n];
    const looks: number[] = [];
    for (let at = first; at < n; at *= 2) looks.push(at);
    looks.push(n);
    if (looks.length <= k) return looks;
  }
  return [n];
}
