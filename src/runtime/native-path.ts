/**
 * Where onnxruntime's native files are when quantd runs as a single compiled
 * executable (`bun build --compile`, see scripts/build.ts).
 *
 * Left to itself, Bun embeds `onnxruntime_binding.node` in the executable and
 * extracts it to a temporary file before loading it; the binding's RUNPATH is
 * `$ORIGIN/`, so the dynamic linker then looks for `libonnxruntime.so.1` in the
 * temporary directory and fails ("libonnxruntime.so.1: cannot open shared object
 * file"). The build therefore ships both files in a `lib/` folder beside the
 * executable and rewrites onnxruntime-node's binding loader to require the
 * binding from the path {@link ortBindingPath} resolves, where `$ORIGIN` finds
 * the library next to it. Nothing is written to /tmp at start either, which
 * matters under systemd's ProtectSystem=strict.
 */
import { existsSync, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { QuantdError } from "../errors.ts";

/** Folder beside a compiled executable holding onnxruntime's native files. */
export const NATIVE_LIB_DIR = "lib";

/** The files a compiled executable needs in {@link NATIVE_LIB_DIR}. */
export const ORT_NATIVE_FILES = ["onnxruntime_binding.node", "libonnxruntime.so.1"] as const;

/** True when this code runs inside a `bun build --compile` executable (its modules live in Bun's `/$bunfs`). */
export function isCompiledBinary(): boolean {
  return import.meta.dir.startsWith("/$bunfs/");
}

/**
 * The folder of the running executable, symlinks resolved, so that a link
 * `/usr/local/bin/quantd → /opt/quantd/quantd` still finds `/opt/quantd/lib`.
 */
export function executableDir(): string {
  let exe = process.execPath;
  try {
    exe = realpathSync(exe);
  } catch {
    // execPath comes from /proc/self/exe and is already resolved on Linux.
  }
  return dirname(exe);
}

/**
 * The onnxruntime binding beside the compiled executable.
 *
 * @param libDir - @defaultValue `lib/` beside the executable
 * @throws FILE_NOT_FOUND when the binding or libonnxruntime is missing (the
 * executable was copied without its `lib/` folder)
 */
export function ortBindingPath(libDir: string = join(executableDir(), NATIVE_LIB_DIR)): string {
  const missing = ORT_NATIVE_FILES.filter((f) => !existsSync(join(libDir, f)));
  if (missing.length > 0) {
    throw new QuantdError(
      "FILE_NOT_FOUND",
      `onnxruntime's native files are missing from ${libDir} (${missing.join(", ")}); ` +
        "the quantd executable needs the lib/ folder of its release tarball beside it",
      { details: { libDir, missing } },
    );
  }
  return join(libDir, ORT_NATIVE_FILES[0]);
}
