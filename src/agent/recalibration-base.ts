/**
 * Which fp32 model an agent's recalibration starts from. A recalibration
 * quantizes an fp32 model and the result replaces what the agent serves, so
 * it must start from the model the agent serves, never one the operator
 * moved away from.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { QUANTIZE_REPORT_FILE } from "../quant/report.ts";
import type { ModelVersion } from "../store/models.ts";
import { BASE_METRIC } from "./recalibrate.ts";
import { releaseOf } from "./release.ts";
import { TOKENIZER_METRIC } from "./version-tokenizer.ts";

/**
 * The fp32 model a recalibration starts from: the one the agent serves. An
 * active fp32 version is its own base (a model promoted by hand included:
 * quantizing the configured model instead would replace the operator's
 * choice with an int8 of another model). An active int8 version names its
 * fp32 base in its metrics (a recalibration's `base`, a release's
 * `release.base`), kept with the fp32 versions' files. Without one, an fp32
 * version of `versions` registered with its tokenizer (see
 * fp32WithTokenizerOf); else (an int8 model promoted by hand, or its base's
 * file gone) the configured model, or
 * when that is an int8 model `quantize --out DIR` wrote, the fp32 model its
 * report names (see {@link fp32SourceOf}).
 */
export function recalibrationBase(
  active: ModelVersion | undefined,
  configured: string,
  versions: () => readonly ModelVersion[] = () => [],
): string {
  if (active === undefined) return configured;
  if (active.kind === "fp32") return existsSync(active.path) ? active.path : configured;
  const recorded = active.metrics[BASE_METRIC];
  const base = typeof recorded === "string" ? recorded : releaseOf(active.metrics)?.base;
  if (base !== undefined && existsSync(base)) return base;
  return fp32WithTokenizerOf(active, versions()) ?? fp32SourceOf(configured) ?? configured;
}

/**
 * An int8 version whose base is not recorded (its store rebuilt from the
 * model files after corruption) was quantized from an fp32 version
 * registered with the same tokenizer, when the store holds one: the most
 * recently active such version whose file is there. The configured model,
 * another model's when its tokenizer differs, comes only after.
 */
function fp32WithTokenizerOf(active: ModelVersion, versions: readonly ModelVersion[]): string | undefined {
  const tokenizer = active.metrics[TOKENIZER_METRIC];
  if (typeof tokenizer !== "string") return undefined;
  return versions
    .filter((v) => v.kind === "fp32" && v.state !== "rejected" && v.metrics[TOKENIZER_METRIC] === tokenizer)
    .sort((a, b) => (b.activatedAt ?? 0) - (a.activatedAt ?? 0) || b.id - a.id)
    .find((v) => existsSync(v.path))?.path;
}

/**
 * The fp32 model an int8 model was quantized from, as the
 * `quantize-report.json` beside it says: only when the report describes this
 * very file (same size as its int8 entry) and the fp32 file it names is still
 * there at its absolute path with the size it had (sizes, not hashes: this
 * runs on the serving thread at a job's start, and the quantizer validates
 * against that fp32 model anyway). `undefined` otherwise.
 */
function fp32SourceOf(int8Model: string): string | undefined {
  const named = reportedFp32Of(int8Model);
  try {
    return named !== undefined && statSync(named.path).size === named.bytes ? named.path : undefined;
  } catch {
    return undefined; // the fp32 file is gone
  }
}

/**
 * The fp32 file the `quantize-report.json` beside `int8Model` names, with the
 * size it had then, when the report describes this very file (same size as
 * its int8 entry); whether that file is still there as it was is not checked.
 */
export function reportedFp32Of(int8Model: string): { path: string; bytes: unknown } | undefined {
  let report: { model?: { fp32?: { path?: unknown; bytes?: unknown }; int8?: { bytes?: unknown } } };
  try {
    report = JSON.parse(readFileSync(join(dirname(int8Model), QUANTIZE_REPORT_FILE), "utf8"));
    const fp32 = report.model?.fp32;
    const path = fp32?.path;
    if (typeof path !== "string" || !isAbsolute(path) || path === int8Model) return undefined;
    if (report.model?.int8?.bytes !== statSync(int8Model).size) return undefined;
    return { path, bytes: fp32?.bytes };
  } catch {
    return undefined; // no report, not JSON, the int8 file gone: no known source
  }
}
