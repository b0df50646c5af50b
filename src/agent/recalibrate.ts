/**
 * The recalibration job: pick samples from the store, calibrate and quantize, validate against fp32,
 * benchmark against the active model, promote or reject, report. (Owned by the recalibration-job helper.)
 *
 * @module
 */
export {};
