/**
 * Where the files shipped with quantd live. Resolved from this source file, not
 * from the working directory, so `quantd demo` works from anywhere (including
 * through `bun link` and the `bin/quantd` entry).
 */
import { join, resolve } from "node:path";
import { executableDir, isCompiledBinary } from "../runtime/native-path.ts";

/**
 * The package root (the folder holding `package.json`); in a compiled release
 * executable, the folder holding the executable (its tarball ships `calib/` beside it).
 */
export const PACKAGE_ROOT: string = isCompiledBinary() ? executableDir() : resolve(import.meta.dir, "../..");

/** The shipped fp32 BERT-Mini SST-2 model folder (model, tokenizer, config). */
export const SHIPPED_MODEL_DIR: string = join(PACKAGE_ROOT, "calib/models/sst2-bert-mini");

/** The shipped fp32 model file. */
export const SHIPPED_MODEL: string = join(SHIPPED_MODEL_DIR, "model.onnx");

/** The shipped labelled SST-2 dev set (872 sentences, `label<TAB>content` with a header). */
export const SHIPPED_DEV_TSV: string = join(PACKAGE_ROOT, "calib/samples/sst2-dev.tsv");
