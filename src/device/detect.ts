/**
 * Detects the board quantd runs on from `/proc` (under a root prefix, so tests
 * and the arm64 emulation harness can supply recorded files of real boards) and
 * chooses its profile. Unsupported targets fail here, before anything heavy.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { QuantdError } from "../errors.ts";
import { type BoardId, type BoardProfile, type DeviceFacts, profileFor } from "./profiles.ts";

/** Where to read facts from; every field defaults to the running machine. */
export interface DetectOptions {
  /** Root prefix for `/proc`. @defaultValue "/" */
  root?: string;
  /** @defaultValue process.arch */
  arch?: string;
  /** glibc version, e.g. "2.36". @defaultValue `getconf GNU_LIBC_VERSION` */
  glibc?: string | null;
}

/** What was detected and the profile chosen from it. */
export interface Detection {
  facts: DeviceFacts;
  profile: BoardProfile;
}

/** ORT's prebuilt Linux library needs glibc 2.28 (JetPack 4 ships 2.27). */
export const MIN_GLIBC = "2.28";

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function runningGlibc(): string | undefined {
  try {
    const out = execFileSync("getconf", ["GNU_LIBC_VERSION"], { encoding: "utf8", timeout: 2000 });
    return /(\d+\.\d+)/.exec(out)?.[1];
  } catch {
    return undefined;
  }
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** Reads the facts quantd bases its choices on. */
export function readFacts(options: DetectOptions = {}): DeviceFacts {
  const root = options.root ?? "/";
  const cpuinfo = readText(join(root, "proc/cpuinfo")) ?? "";
  const meminfo = readText(join(root, "proc/meminfo")) ?? "";
  const model = readText(join(root, "proc/device-tree/model"))?.replace(/\0/g, "").trim();
  let cores = 0;
  const features = new Set<string>();
  const cpuParts = new Set<string>();
  let cpuArchitecture: string | undefined;
  for (const line of cpuinfo.split("\n")) {
    const sep = line.indexOf(":");
    if (sep < 0) continue;
    const key = line.slice(0, sep).trim();
    const value = line.slice(sep + 1).trim();
    if (key === "processor") {
      cores++;
    } else if (key === "Features" || key === "flags") {
      for (const f of value.split(/\s+/)) if (f) features.add(f);
    } else if (key === "CPU part") {
      cpuParts.add(value);
    } else if (key === "CPU architecture") {
      cpuArchitecture = value;
    }
  }
  const memKb = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  let arch = options.arch ?? process.arch;
  // A 32-bit userland on a 64-bit core still reports ARMv7 features; trust the recorded files when given a root.
  if (options.root !== undefined && options.arch === undefined) {
    if (cpuArchitecture === "7") arch = "arm";
    else if (cpuArchitecture === "8") arch = "arm64";
    else if (features.has("sse2")) arch = "x64";
  }
  const glibc = options.glibc === null ? undefined : (options.glibc ?? runningGlibc());
  return {
    model: model === "" ? undefined : model,
    arch,
    cores: cores > 0 ? cores : 1,
    memTotalMb: Math.round(memKb / 1024),
    features: [...features].sort(),
    cpuParts: [...cpuParts],
    glibc,
  };
}

/** Chooses the board from the facts. @throws DEVICE_UNSUPPORTED for 32-bit ARM, unknown CPUs and old glibc */
export function chooseBoard(facts: DeviceFacts): BoardId {
  if (facts.arch === "arm" || facts.arch === "armv7l") {
    throw new QuantdError(
      "DEVICE_UNSUPPORTED",
      `32-bit ARM (${facts.model ?? "unknown board"}) is not supported: Bun and onnxruntime ship only arm64 and x64 builds; install a 64-bit OS`,
      { details: { arch: facts.arch, model: facts.model } },
    );
  }
  if (facts.glibc !== undefined && compareVersions(facts.glibc, MIN_GLIBC) < 0) {
    throw new QuantdError(
      "DEVICE_UNSUPPORTED",
      `glibc ${facts.glibc} is older than ${MIN_GLIBC}, which onnxruntime's library needs (JetPack 4 on the original Jetson Nano ships 2.27); upgrade the OS`,
      { details: { glibc: facts.glibc, model: facts.model } },
    );
  }
  const model = facts.model ?? "";
  if (facts.arch === "arm64") {
    if (/Raspberry Pi 5/.test(model)) return "rpi5";
    if (/Raspberry Pi 4|Raspberry Pi Compute Module 4/.test(model)) return "rpi4";
    if (/Jetson.*Orin|Orin/.test(model)) return "jetson-orin";
    return "generic-arm64";
  }
  if (facts.arch === "x64") return "generic-x64";
  throw new QuantdError(
    "DEVICE_UNSUPPORTED",
    `architecture ${facts.arch} is not supported (arm64 and x64 are)`,
    {
      details: { arch: facts.arch },
    },
  );
}

/**
 * Detects the board and its profile.
 * @throws DEVICE_UNSUPPORTED when quantd cannot run here
 */
export function detectDevice(options: DetectOptions = {}): Detection {
  const facts = readFacts(options);
  return { facts, profile: profileFor(chooseBoard(facts), facts) };
}
