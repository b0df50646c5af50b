/**
 * Board profiles: what quantd should do by default on each kind of board it
 * ships to. A profile is data; `detect.ts` picks one from what the kernel says.
 */

/** Boards quantd knows. */
export type BoardId = "rpi4" | "rpi5" | "jetson-orin" | "generic-arm64" | "generic-x64";

/** int8 formats the quantizer can produce, in the order a board should try them. */
export type Int8Format = "int8-static" | "int8-dynamic";

/**
 * One int8 build `quantize --mode auto` tries: static (calibrated, written as
 * portable QDQ or onnxruntime's fused MatMulIntegerToFloat, with uint8 or
 * int8 activations against int8 weights: U8S8 or S8S8) or dynamic.
 */
export interface AutoCandidate {
  mode: "static" | "dynamic";
  format?: "qdq" | "fused";
  activations?: "uint8" | "int8";
}

/** The candidates `--mode auto` times on a board, and why those. */
export interface AutoCandidates {
  candidates: AutoCandidate[];
  why: string;
}

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
  /** Every int8 form that can be the fastest on this board: `--mode auto` builds, validates and times each. */
  auto: AutoCandidates;
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

const U8S8_FUSED: AutoCandidate = { mode: "static", format: "fused", activations: "uint8" };
const S8S8_FUSED: AutoCandidate = { mode: "static", format: "fused", activations: "int8" };
const U8S8_QDQ: AutoCandidate = { mode: "static", format: "qdq", activations: "uint8" };
const S8S8_QDQ: AutoCandidate = { mode: "static", format: "qdq", activations: "int8" };
const DYNAMIC: AutoCandidate = { mode: "dynamic" };

/**
 * The int8 forms worth timing on a CPU. On arm64, MLAS has kernels for both
 * U8S8 and S8S8: with the dot-product extension both run on sdot/udot and
 * either can win by core; without it (Cortex-A72, Pi 4) they take different
 * NEON widening-multiply paths, so both are timed there too. x86 MLAS has
 * VNNI/AVX2 kernels for U8S8 only; S8S8 takes a slow path (4–20 × slower,
 * measured on a VNNI EPYC), so it is not tried.
 */
export function autoCandidatesFor(facts: Pick<DeviceFacts, "arch" | "features">): AutoCandidates {
  if (facts.arch === "arm64") {
    const dot = facts.features.includes("asimddp");
    return {
      candidates: [U8S8_FUSED, S8S8_FUSED, U8S8_QDQ, S8S8_QDQ, DYNAMIC],
      why: dot
        ? "arm64 with dot product (asimddp): U8S8 and S8S8 both run on sdot/udot kernels and either can be faster on this core, so both are timed, fused and QDQ, beside dynamic"
        : "arm64 without dot product: U8S8 and S8S8 take different NEON widening-multiply kernels, so both are timed, fused and QDQ, beside dynamic (no requantization per MatMul)",
    };
  }
  return {
    candidates: [U8S8_FUSED, U8S8_QDQ, DYNAMIC],
    why: "x86: onnxruntime's VNNI/AVX2 int8 kernels take uint8 activations with int8 weights (U8S8); S8S8 runs on a slow path there and is not tried",
  };
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
  const auto = autoCandidatesFor(facts);
  const samplePool = {
    maxRows: facts.memTotalMb >= 4096 ? 20_000 : 5_000,
    maxBytes: (facts.memTotalMb >= 4096 ? 32 : 8) * MIB,
  };
  const board = boardTraits(id, facts);
  return {
    id,
    name: board.name,
    threads,
    preferredFormats: board.preferredFormats,
    reduceRange: board.reduceRange,
    auto,
    memoryMaxMb,
    samplePool,
  };
}

/** What sets one board apart: its name, the int8 forms it prefers, whether weights need a reduced range. */
function boardTraits(
  id: BoardId,
  facts: DeviceFacts,
): Pick<BoardProfile, "name" | "preferredFormats" | "reduceRange"> {
  const dotFirst: BoardProfile["preferredFormats"] = ["int8-static", "int8-dynamic"];
  switch (id) {
    case "rpi4":
      return {
        name: "Raspberry Pi 4",
        preferredFormats: ["int8-dynamic", "int8-static"],
        reduceRange: false,
      };
    case "rpi5":
      return { name: "Raspberry Pi 5", preferredFormats: dotFirst, reduceRange: false };
    case "jetson-orin":
      return {
        name: facts.model?.replace(/ Developer Kit$/, "") ?? "NVIDIA Jetson Orin",
        preferredFormats: dotFirst,
        reduceRange: false,
      };
    case "generic-arm64":
      return {
        name: "generic arm64",
        preferredFormats: facts.features.includes("asimddp") ? dotFirst : ["int8-dynamic", "int8-static"],
        reduceRange: false,
      };
    case "generic-x64": {
      // Without VNNI, AVX2's u8×s8 multiply-add saturates at int16: weights keep 7 bits.
      const vnni = facts.features.some((f) => f === "avx512_vnni" || f === "avx_vnni");
      return {
        name: "generic x64",
        preferredFormats: dotFirst,
        reduceRange: !vnni && facts.features.includes("avx2"),
      };
    }
  }
}
