/**
 * What `--mode auto` found fastest on this board, kept with the board's
 * profile: the profile ({@link BoardProfile}) says which int8 forms are worth
 * timing here; this record says which one won for each model, with the p50 of
 * every candidate and why. It lives in the agent's state directory
 * (`<stateDir>/board-profile.json`), written by `quantd quantize --mode auto`
 * and by auto recalibrations, and `quantd device` shows it.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { isRecord } from "../json.ts";
import type { BoardId, BoardProfile } from "./profiles.ts";

/** One candidate `--mode auto` built, as the board record keeps it. */
export interface AutoChoiceCandidate {
  /** e.g. `static/percentile/fused`, `static/percentile/qdq/s8s8`, `dynamic`. */
  form: string;
  /** p50 at the auto benchmark's shape, when it was timed. */
  p50Ms?: number;
  passed: boolean;
  /** `false` when auto did not validate it: timed slower than a form that had already passed. */
  validated?: false;
}

/** The winner of one `--mode auto` run on this board. */
export interface AutoChoice {
  /** The fp32 model the candidates were built from (absolute path): the record's key. */
  model: string;
  /**
   * The file the user gave for that model, when `model` is the agent's registry
   * copy of it (`<state-dir>/models/<sha256>.onnx`, a name that says nothing):
   * what `quantd device` names the model by.
   */
  source?: string;
  board: BoardId;
  /** The winning form (see {@link AutoChoiceCandidate.form}). */
  winner: string;
  /** Why it won: its p50 against the others', or that it alone met the gate (the report's `auto.decision`). */
  decision: string;
  /** Why these candidates on this board (the profile's reason). */
  why: string;
  candidates: AutoChoiceCandidate[];
  /**
   * What a recalibration's benchmark against the fp32 model made of the
   * winner: that it beats fp32 here (faster), that it serves within the job's
   * latency ratio of fp32, or that no int8 form beats fp32 and fp32 keeps
   * serving (unless the operator prefers size).
   */
  vsFp32?: string;
  /** ISO time of the run. */
  at: string;
}

/** What {@link autoChoiceOf} reads from a quantize report (the report's own shape). */
export interface AutoOutcome {
  mode: string;
  method?: string;
  format?: string;
  activations?: string;
  auto?: { why: string; decision: string };
  candidates: readonly {
    mode: string;
    method?: string;
    format?: string;
    activations?: string;
    p50Ms?: number;
    passed: boolean;
    validated?: false;
  }[];
}

/** Most models the record keeps (the latest runs). */
const MAX_CHOICES = 16;

/** `<stateDir>/board-profile.json`. */
export function boardRecordPath(stateDir: string): string {
  return join(stateDir, "board-profile.json");
}

function formOf(c: { mode: string; method?: string; format?: string; activations?: string }): string {
  // U8S8 is the default pairing and goes unnamed, as in the report's decision line.
  const pairing = c.activations === "int8" ? "s8s8" : undefined;
  return [c.mode, c.method, c.format, pairing].filter((x) => x !== undefined).join("/");
}

/** The record of an auto run from its report; undefined when the run was not `--mode auto`. */
export function autoChoiceOf(
  report: AutoOutcome,
  model: string,
  board: BoardId,
  at = new Date().toISOString(),
): AutoChoice | undefined {
  if (report.auto === undefined) return undefined;
  return {
    model,
    board,
    winner: formOf(report),
    decision: report.auto.decision,
    why: report.auto.why,
    candidates: report.candidates.map((c) => ({
      form: formOf(c),
      ...(c.p50Ms !== undefined ? { p50Ms: c.p50Ms } : {}),
      passed: c.passed,
      ...(c.validated === false ? { validated: false as const } : {}),
    })),
    at,
  };
}

function isChoice(x: unknown): x is AutoChoice {
  return (
    isRecord(x) &&
    typeof x["model"] === "string" &&
    typeof x["winner"] === "string" &&
    typeof x["decision"] === "string" &&
    typeof x["at"] === "string" &&
    (x["source"] === undefined || typeof x["source"] === "string") &&
    Array.isArray(x["candidates"]) &&
    (x["vsFp32"] === undefined || typeof x["vsFp32"] === "string")
  );
}

/** What the state directory holds: the auto winners, newest first, and why any were not readable. */
export interface BoardRecord {
  choices: AutoChoice[];
  /** Set when the file exists but could not be read (it is then rewritten by the next record). */
  problem?: string;
}

/** Reads the record; a missing file is an empty record, a damaged one says so in `problem`. */
export function readBoardRecord(stateDir: string): BoardRecord {
  const path = boardRecordPath(stateDir);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return { choices: [] };
  }
  try {
    const parsed: unknown = JSON.parse(text);
    const list = isRecord(parsed) && Array.isArray(parsed["auto"]) ? parsed["auto"] : undefined;
    if (list === undefined) return { choices: [], problem: `${path} has no "auto" list` };
    return { choices: list.filter(isChoice) };
  } catch (err) {
    return { choices: [], problem: `${path} is not JSON: ${(err as Error).message}` };
  }
}

/**
 * Adds (or replaces, for the same model) an auto winner, keeping the latest
 * {@link MAX_CHOICES}; written to a temporary file and renamed, so a reader
 * never sees half a record.
 *
 * @throws Error from the file system (callers warn: the quantized model is written either way)
 */
export function recordAutoChoice(stateDir: string, choice: AutoChoice, profile?: BoardProfile): void {
  const kept = readBoardRecord(stateDir).choices.filter((c) => c.model !== choice.model);
  const choices = [choice, ...kept].slice(0, MAX_CHOICES);
  mkdirSync(stateDir, { recursive: true });
  const path = boardRecordPath(stateDir);
  const tmp = `${path}.${process.pid}.tmp`;
  const body = { ...(profile !== undefined ? { board: profile.id, name: profile.name } : {}), auto: choices };
  writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`);
  renameSync(tmp, path);
}

/**
 * Records the winner of an auto run in `stateDir` with the board it ran on
 * (and, from a recalibration's benchmark, how it fared against fp32, and the
 * user's file when `model` is the registry's copy of it);
 * returns the record's path, or undefined when the report is not of an auto run.
 *
 * @throws Error from the file system (callers warn: the quantized model is written either way)
 */
export function recordAutoOutcome(
  stateDir: string,
  model: string,
  report: AutoOutcome,
  profile: BoardProfile,
  vsFp32?: string,
  source?: string,
): string | undefined {
  const choice = autoChoiceOf(report, resolve(model), profile.id);
  if (choice === undefined) return undefined;
  const named = source === undefined ? choice : { ...choice, source: resolve(source) };
  recordAutoChoice(stateDir, vsFp32 === undefined ? named : { ...named, vsFp32 }, profile);
  return boardRecordPath(stateDir);
}
