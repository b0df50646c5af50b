/**
 * The two decisions of early stopping, shared by every validator (the
 * classifier's in `validate.ts`, other tasks' in `task-validate.ts`): a
 * candidate stops as failed as soon as even every trial left agreeing could
 * not lift the bound at the last look over the gate (futility: certain, so no
 * α is spent on it), and as passed at an earlier look when its bound, at the
 * stricter level the looks share (`lookLevels`), already clears the gate.
 * Neither applies when the gate decides on the point estimate, and a pass
 * waits for the whole set when an accuracy bound needs every label.
 */
import { clopperPearsonLower, samplesToCertify } from "./confidence.ts";
import type { GateSpec } from "./gate.ts";

/** Trials counted so far and how many of them agree. */
export interface TrialTally {
  n: number;
  agree: number;
}

/**
 * Whether the candidate can no longer pass: with all `left` trials still to
 * run agreeing, the bound at `finalLevel` would still be under the gate.
 */
export function cannotPass(gate: GateSpec, seen: TrialTally, left: number, finalLevel: number): boolean {
  return (
    gate.decideOn !== "point" &&
    clopperPearsonLower(seen.agree + left, seen.n + left, finalLevel) < gate.minAgreement
  );
}

/**
 * Whether the candidate already certifies the gate at an earlier look: enough
 * trials to certify it at `interimLevel` at all, and a bound at that level over it.
 */
export function passesAtLook(gate: GateSpec, seen: TrialTally, interimLevel: number): boolean {
  return (
    gate.decideOn !== "point" &&
    gate.maxAccuracyDrop === undefined &&
    seen.n >= samplesToCertify(gate.minAgreement, interimLevel) &&
    clopperPearsonLower(seen.agree, seen.n, interimLevel) >= gate.minAgreement
  );
}
