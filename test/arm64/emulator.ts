/**
 * Runs arm64 quantd under Debian's qemu-user on an x86 host, as a Raspberry Pi
 * 4 (Cortex-A72) or 5 (Cortex-A76) would.
 *
 * The sysroot given to qemu with `-L` holds the arm64 glibc and libstdc++ from
 * Debian's cross packages and the recorded `/proc` files of the board: qemu
 * looks every absolute path up under `-L` first, so `/proc/cpuinfo` reads the
 * board's file. That matters beyond board detection: onnxruntime's CPU probe
 * crashes on the x86 host's `/proc/cpuinfo` under qemu.
 *
 * The CPU model is always a real core. Never qemu's default `max`: its SME
 * path gave wrong int8 results from onnxruntime's kernels.
 */
import { cpSync, existsSync, mkdirSync, symlinkSync } from "node:fs";
import { join, resolve } from "node:path";

/** Boards emulated, with the fixture their `/proc` comes from. */
export type EmulatedBoard = "rpi4" | "rpi5";

/** The qemu CPU model of each board. */
export const BOARD_CPU: Readonly<Record<EmulatedBoard, string>> = { rpi4: "cortex-a72", rpi5: "cortex-a76" };

/** Debian packages the emulation needs (`apt-get install` them). */
export const APT_PACKAGES = [
  "qemu-user-static",
  "libc6-arm64-cross",
  "libstdc++6-arm64-cross",
  "libgcc-s1-arm64-cross",
] as const;

/** Where Debian's cross packages put the arm64 runtime libraries. */
export const CROSS_LIB_DIR = "/usr/aarch64-linux-gnu/lib";

const FIXTURES = resolve(import.meta.dir, "../fixtures/boards");

/** The qemu-user executable for aarch64, or undefined when none is installed. */
export function findQemu(): string | undefined {
  for (const name of ["qemu-aarch64-static", "qemu-aarch64"]) {
    const found = Bun.which(name);
    if (found !== null) return found;
  }
  return undefined;
}

/** What is missing for emulation here, as a list of human reasons (empty when all is there). */
export function missingPrerequisites(): string[] {
  const missing: string[] = [];
  if (process.platform !== "linux") missing.push(`a Linux host (this is ${process.platform})`);
  if (findQemu() === undefined) missing.push("qemu-aarch64 (apt-get install qemu-user-static)");
  for (const lib of ["ld-linux-aarch64.so.1", "libc.so.6", "libstdc++.so.6", "libgcc_s.so.1"]) {
    if (!existsSync(join(CROSS_LIB_DIR, lib)))
      missing.push(`${CROSS_LIB_DIR}/${lib} (apt-get install ${APT_PACKAGES.slice(1).join(" ")})`);
  }
  return missing;
}

/**
 * Builds a sysroot for `-L`: the arm64 libraries (linked, not copied) and the
 * board's recorded `proc/` files.
 */
export function makeSysroot(board: EmulatedBoard, dir: string): string {
  mkdirSync(dir, { recursive: true });
  // The arm64 loader is /lib/ld-linux-aarch64.so.1; libraries are found in /lib too.
  if (!existsSync(join(dir, "lib"))) symlinkSync(CROSS_LIB_DIR, join(dir, "lib"));
  cpSync(join(FIXTURES, board, "proc"), join(dir, "proc"), { recursive: true });
  return dir;
}

/** Options of {@link qemuArgv}. */
export interface QemuOptions {
  /** qemu CPU model, e.g. `cortex-a72`. */
  cpu: string;
  sysroot: string;
  /** The arm64 program and its arguments. */
  argv: readonly string[];
}

/**
 * The command line running an arm64 program under qemu-user.
 *
 * @throws Error for the `max` CPU (wrong int8 results) or when qemu is missing
 */
export function qemuArgv(opts: QemuOptions): string[] {
  if (opts.cpu === "max" || opts.cpu === "any") {
    throw new Error(
      `qemu CPU '${opts.cpu}' is refused: its SME path gave wrong int8 results; use a real core`,
    );
  }
  const qemu = findQemu();
  if (qemu === undefined) throw new Error("qemu-aarch64 is not installed (apt-get install qemu-user-static)");
  return [qemu, "-L", opts.sysroot, "-cpu", opts.cpu, ...opts.argv];
}
