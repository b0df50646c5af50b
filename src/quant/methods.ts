/**
 * The calibration methods' and modes' names, in a module of their own so that
 * the agent and the fleet protocol can check a job's parameters without
 * loading the quantizer (which the agent loads only when a recalibration runs,
 * and the fleet controller never: it pulls in onnxruntime's native addon).
 */
import type { QuantizeMode } from "./plan.ts";

/** How activation ranges are estimated. */
export type CalibrationMethod = "minmax" | "moving-average" | "percentile" | "entropy" | "mse";

/** The calibration methods, for CLI parsing and help. */
export const CALIBRATION_METHODS: readonly CalibrationMethod[] = [
  "minmax",
  "moving-average",
  "percentile",
  "entropy",
  "mse",
];

/** What a user may ask for: a format, or `auto` to let quantd measure and choose. */
export type RequestedMode = QuantizeMode | "auto";

/** Every {@link RequestedMode}: what `quantd quantize --mode`, a job's and a fleet command's `mode` accept. */
export const REQUESTED_MODES: readonly RequestedMode[] = ["static", "dynamic", "auto"];

/**
 * What a recalibration serves when its int8 candidate is not faster than the
 * active model (`quantize.prefer`, a job's and a fleet command's `prefer`):
 * `latency` keeps the faster one, so on a board where no int8 form beats fp32
 * (possible on a Pi 4) fp32 keeps serving and the job says so; `size` serves
 * the smaller int8 model anyway.
 */
export const QUANTIZE_PREFERENCES = ["latency", "size"] as const;
/** One of {@link QUANTIZE_PREFERENCES}. */
export type QuantizePreference = (typeof QUANTIZE_PREFERENCES)[number];
