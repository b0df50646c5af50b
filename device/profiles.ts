/**
 * Board profiles: what quantd should do by default on each kind of board it
 * ships to. A profile is data; `detect.ts` picks one from what the kernel says.
 */

/** Boards quantd knows. */
export type BoardId = "rpi4" | "rpi5" | "jetson-orin" | "generic-arm64" | "generic-x64";

/** int8 formats the quantizer can produce, in the order a board should try them. */
export type Int8Format = "int8-static" | "int8-dynamic";

/** Defaults for one kind of board. */
export interface BoardProfile {
  id: BoardId;
  /** Human name for `quantd device`. */
  name: string;
  /**
   * Intra-op threads for inference. One core is left to the agent, the server
   * and the OS on boards with four or more cores.
   */
  threads: number;
  /** Formats `quantize --mode auto` and the recalibration job try first. */
  preferredFormats: Int8Format[];
  /**
   * Use 7-bit weights. Only x86 without VNNI needs it: its u8×s8 multiply-add
   * (vpmaddubsw) saturates int16 pairs with full 8-bit weights.
   */
  reduceRange: boolean;
  /** systemd `MemoryMax` for the service, in MiB. */
  memoryMaxMb: number;
  /** Bounds of the local sample pool. */
  samplePool: { maxRows: number; maxBytes: number };
}

/** Facts read from the machine that a profile was chosen from. */
export interface DeviceFacts {
  /** `/proc/device-tree/model`, when the board has a device tree. */
  model: string | undefined;
  /** Node-style architecture: `arm64`, `x64`, `arm`, … */
  arch: string;
  cores: number;
  memTotalMb: number;
  /** CPU feature flags (arm64 `Features`, x86 `flags`). */
  features: string[];
  /** arm64 `CPU part` values, e.g. `0xd08` (Cortex-A72). */
  cpuParts: string[];
  /** glibc version, e.g. `2.36`, when known. */
  glibc: string | undefined;
}

const MIB = 1024 * 1024;

function threadsFor(cores: number): number {
  return cores >= 4 ? cores - 1 : Math.max(1, cores);
}

/** Memory cap: a quarter of RAM, at least 384 MiB and at most 1 GiB. */
function memoryMaxFor(memTotalMb: number): number {
  return Math.min(1024, Math.max(384, Math.floor(memTotalMb / 4)));
}

/**
 * Builds the profile for a board from the facts.
 *
 * Pi 4's Cortex-A72 has no dot-product instructions, so ORT's int8 GEMM runs on
 * plain NEON widening multiplies; dynamic quantization avoids a requantize pass
 * per MatMul there. Boards with `asimddp` (Pi 5, Orin, Neoverse) run static
 * QDQ kernels with sdot/udot and try static first.
 */
export function profileFor(id: BoardId, facts: DeviceFacts): BoardProfile {
  const threads = threadsFor(facts.cores);
  const memoryMaxMb = memoryMaxFor(facts.memTotalMb);
  const hasDot = facts.features.includes("asimddp");
  const samplePool = {
    maxRows: facts.memTotalMb >= 4096 ? 20_000 : 5_000,
    maxBytes: (facts.memTotalMb >= 4096 ? 32 : 8) * MIB,
  };
  switch (id) {
    case "rpi4":
      return {
        id,
        name: "Raspberry Pi 4",
        threads,
        preferredFormats: ["int8-dynamic", "int8-static"],
        reduceRange: false,
        memoryMaxMb,
        samplePool,
      };
    case "rpi5":
      return {
        id,
        name: "Raspberry Pi 5",
        threads,
        preferredFormats: ["int8-static", "int8-dynamic"],
        reduceRange: false,
        memoryMaxMb,
        samplePool,
      };
    case "jetson-orin":
      return {
        id,
        name: facts.model?.replace(/ Developer Kit$/, "") ?? "NVIDIA Jetson Orin",
        threads,
        preferredFormats: ["int8-static", "int8-dynamic"],
        reduceRange: false,
        memoryMaxMb,
        samplePool,
      };
    case "generic-arm64":
      return {
        id,
        name: "generic arm64",
        threads,
        preferredFormats: hasDot ? ["int8-static", "int8-dynamic"] : ["int8-dynamic", "int8-static"],
        reduceRange: false,
        memoryMaxMb,
        samplePool,
      };
    case "generic-x64": {
      const vnni = facts.features.some((f) => f === "avx512_vnni" || f === "avx_vnni");
      return {
        id,
        name: "generic x64",
        threads,
        preferredFormats: ["int8-static", "int8-dynamic"],
        reduceRange: !vnni && facts.features.includes("avx2"),
        memoryMaxMb,
        samplePool,
      };
    }
  }
}
