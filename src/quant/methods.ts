/**
 * The calibration methods' names, in a module of their own so that the agent
 * can check a job's parameters without loading the quantizer (which it loads
 * only when a recalibration runs).
 */

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
