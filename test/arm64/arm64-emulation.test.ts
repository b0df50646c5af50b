/**
 * arm64 correctness under emulation (`bun run test:arm64`): Bun's arm64 runtime
 * and onnxruntime's arm64 library under qemu-user as a Raspberry Pi 4
 * (Cortex-A72, no dot product) and a Pi 5 (Cortex-A76, sdot/udot), each with
 * its recorded /proc. On each board: detect the profile, quantize the shipped
 * BERT (static on 8 calibration samples, and dynamic), compute logits on 16 dev
 * sentences, and compare with the same steps run on this x86 host; then run the
 * compiled arm64 release executable on the int8 model.
 *
 * Emulation is ~100-200× slower than the host, so this is not part of
 * `bun test`: it runs only with QUANTD_ARM64=1 (which `test:arm64` sets).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { type LogitsReport, modelLogits } from "./logits.ts";
import { softmax } from "../../src/runtime/classifier.ts";
import { BOARD_CPU, type EmulatedBoard, makeSysroot, missingPrerequisites, qemuArgv } from "./emulator.ts";
import { buildRelease, bunRuntime } from "../../scripts/build.ts";
import { expectClose } from "../helpers/expect-close.ts";

const REPO = resolve(import.meta.dir, "../..");
const MODEL_DIR = join(REPO, "calib/models/sst2-bert-mini");
const FP32 = join(MODEL_DIR, "model.onnx");
const enabled = process.env["QUANTD_ARM64"] === "1";
const BOARDS: readonly EmulatedBoard[] = ["rpi4", "rpi5"];

/**
 * How close arm64 must be to x86. fp32 differs only by the order of float
 * additions in the GEMM kernels. int8 differs by the kernels' requantization
 * rounding (ARM's NEON/sdot vs x86's VNNI paths) and, for static models
 * calibrated on each arch, by the fp32 noise in the calibrated ranges: about
 * 0.005 on logits of magnitude ~4 when measured (see the printed figures).
 */
const TOLERANCE = {
  fp32: { atol: 1e-4, rtol: 0 },
  int8: { atol: 0.03, rtol: 0.005 },
} as const;

/** Calibration rows (the first 8) and held-out validation rows (the next 8). */
const CALIB_ROWS = 8;
const VAL_ROWS = 8;
const DEV_ROWS = 16;

interface Timed<T> {
  value: T;
  seconds: number;
}

interface BoardRun {
  hwcap: { arch: string; hwcap: string; asimddp: boolean };
  device: {
    facts: { model: string; features: string[] };
    profile: { id: string; preferredFormats: string[] };
  };
  logits: LogitsReport;
  staticModel: string;
  dynamicModel: string;
  compiled: { results: { label: string; labelId: number; probabilities: number[] }[] };
  seconds: Record<string, number>;
}

const work = mkdtempSync(join(tmpdir(), "quantd-arm64-"));
const calibTsv = join(work, "calib.tsv");
const devTsv = join(work, "dev.tsv");
const hostStatic = join(work, "x86-static.onnx");
const hostDynamic = join(work, "x86-dynamic.onnx");
let hostLogits: LogitsReport;
let bunArm64 = "";
let compiledArm64 = "";
const runs = new Map<EmulatedBoard, Promise<BoardRun>>();
const smokeTexts = ["a fine film", "a dull, lifeless and tedious mess"];

function headRows(src: string, dst: string, from: number, count: number): void {
  const lines = readFileSync(src, "utf8").split("\n");
  writeFileSync(dst, `${[lines[0], ...lines.slice(1 + from, 1 + from + count)].join("\n")}\n`);
}

async function spawn(cmd: string[], what: string): Promise<Timed<string>> {
  const started = performance.now();
  const child = Bun.spawn(cmd, { cwd: REPO, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  if (code !== 0) throw new Error(`${what} failed (exit ${code}):\n${stderr}\n${stdout}`);
  return { value: stdout, seconds: (performance.now() - started) / 1000 };
}

function quantizeArgs(mode: "static" | "dynamic", out: string): string[] {
  return [
    "quantize",
    "--model",
    FP32,
    "--calib",
    calibTsv,
    "--samples",
    String(CALIB_ROWS),
    "--val-samples",
    String(VAL_ROWS),
    "--mode",
    mode,
    "--gate",
    "0",
    "--threads",
    "1",
    "--out",
    out,
  ];
}

async function runBoard(board: EmulatedBoard): Promise<BoardRun> {
  const sysroot = makeSysroot(board, join(work, `sysroot-${board}`));
  const cpu = BOARD_CPU[board];
  const arm = (argv: string[]) => qemuArgv({ cpu, sysroot, argv });
  const cli = join(REPO, "src/cli/main.ts");
  const staticModel = join(work, `arm-static-${board}.onnx`);
  const dynamicModel = join(work, `arm-dynamic-${board}.onnx`);
  const seconds: Record<string, number> = {};

  const hwcap = await spawn(arm([bunArm64, join(REPO, "test/arm64/hwcap.ts")]), `${board} hwcap`);
  const device = await spawn(arm([bunArm64, cli, "device", "--json"]), `${board} device`);
  seconds["device"] = device.seconds;
  const st = await spawn(
    arm([bunArm64, cli, ...quantizeArgs("static", staticModel)]),
    `${board} quantize static`,
  );
  seconds["quantize static"] = st.seconds;
  const dy = await spawn(
    arm([bunArm64, cli, ...quantizeArgs("dynamic", dynamicModel)]),
    `${board} quantize dynamic`,
  );
  seconds["quantize dynamic"] = dy.seconds;
  const logits = await spawn(
    arm([
      bunArm64,
      join(REPO, "test/arm64/logits.ts"),
      MODEL_DIR,
      devTsv,
      FP32,
      staticModel,
      hostStatic,
      dynamicModel,
    ]),
    `${board} logits`,
  );
  seconds["logits (4 models × 16)"] = logits.seconds;
  const compiled = await spawn(
    arm([
      compiledArm64,
      "classify",
      "--json",
      "--model",
      staticModel,
      "--tokenizer",
      MODEL_DIR,
      ...smokeTexts,
    ]),
    `${board} compiled classify`,
  );
  seconds["compiled classify"] = compiled.seconds;
  return {
    hwcap: JSON.parse(hwcap.value),
    device: JSON.parse(device.value),
    logits: JSON.parse(logits.value) as LogitsReport,
    staticModel,
    dynamicModel,
    compiled: JSON.parse(compiled.value),
    seconds,
  };
}

function argmaxRows(rows: number[][]): number[] {
  return rows.map((r) => r.indexOf(Math.max(...r)));
}

function maxAbsDiff(a: number[][], b: number[][]): number {
  let m = 0;
  a.forEach((row, i) => {
    row.forEach((v, j) => {
      m = Math.max(m, Math.abs(v - b[i]![j]!));
    });
  });
  return m;
}

function compare(
  actual: number[][],
  expected: number[][],
  tol: { atol: number; rtol: number },
  what: string,
) {
  expect(actual.length).toBe(DEV_ROWS);
  expect(argmaxRows(actual)).toEqual(argmaxRows(expected));
  expectClose(actual.flat(), expected.flat(), { ...tol, what });
}

const missing = enabled ? missingPrerequisites() : [];

beforeAll(async () => {
  if (!enabled || missing.length > 0) return;
  headRows(join(REPO, "calib/samples/sst2-train-4k.tsv"), calibTsv, 0, CALIB_ROWS + VAL_ROWS);
  headRows(join(REPO, "calib/samples/sst2-dev.tsv"), devTsv, 0, DEV_ROWS);
  bunArm64 = bunRuntime("linux-arm64");
  const release = await buildRelease({ target: "linux-arm64", outDir: join(work, "dist"), tarball: false });
  compiledArm64 = release.executable;
  const cli = join(REPO, "src/cli/main.ts");
  await spawn([process.execPath, cli, ...quantizeArgs("static", hostStatic)], "host quantize static");
  await spawn([process.execPath, cli, ...quantizeArgs("dynamic", hostDynamic)], "host quantize dynamic");
  hostLogits = await modelLogits(MODEL_DIR, devTsv, [FP32, hostStatic, hostDynamic]);
  // Both boards at once: each emulation is single-threaded.
  for (const board of BOARDS) {
    const run = runBoard(board);
    run.catch(() => {}); // awaited (and reported) by the tests
    runs.set(board, run);
  }
}, 600_000);

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe.skipIf(!enabled)("arm64 under qemu-user", () => {
  test("prerequisites are installed", () => {
    expect(missing).toEqual([]);
  });

  for (const board of BOARDS) {
    describe(`${board} (${BOARD_CPU[board]})`, () => {
      const get = async (): Promise<BoardRun> => {
        const run = runs.get(board);
        if (run === undefined) throw new Error("the emulated run did not start (see the prerequisites test)");
        return run;
      };

      test("detects the board from the emulated /proc", async () => {
        const { device } = await get();
        expect(device.profile.id).toBe(board);
        expect(device.facts.features.includes("asimddp")).toBe(board === "rpi5");
        expect(device.profile.preferredFormats[0]).toBe(board === "rpi5" ? "int8-static" : "int8-dynamic");
      }, 1_800_000);

      test("the emulated CPU offers dot-product instructions (onnxruntime's sdot/udot kernels) only as a Pi 5", async () => {
        const { hwcap } = await get();
        expect(hwcap.arch).toBe("arm64");
        expect(hwcap.asimddp).toBe(board === "rpi5");
      }, 1_800_000);

      test("fp32 logits match x86", async () => {
        const { logits } = await get();
        expect(logits.arch).toBe("arm64");
        compare(logits.logits[FP32]!, hostLogits.logits[FP32]!, TOLERANCE.fp32, `${board} fp32`);
      }, 1_800_000);

      test("static int8 quantized and run on arm64 matches quantized and run on x86", async () => {
        const { logits, staticModel } = await get();
        compare(
          logits.logits[staticModel]!,
          hostLogits.logits[hostStatic]!,
          TOLERANCE.int8,
          `${board} static`,
        );
        // The same int8 model on both: only the kernels differ.
        compare(
          logits.logits[hostStatic]!,
          hostLogits.logits[hostStatic]!,
          TOLERANCE.int8,
          `${board} x86 model`,
        );
      }, 1_800_000);

      test("dynamic int8: the same model bytes as on x86, and matching logits", async () => {
        const { logits, dynamicModel } = await get();
        expect(Bun.hash(readFileSync(dynamicModel))).toBe(Bun.hash(readFileSync(hostDynamic)));
        compare(
          logits.logits[dynamicModel]!,
          hostLogits.logits[hostDynamic]!,
          TOLERANCE.int8,
          `${board} dynamic`,
        );
      }, 1_800_000);

      test("the compiled arm64 executable classifies with the int8 model like x86 does", async () => {
        const { compiled, staticModel } = await get();
        expect(compiled.results.map((r) => r.label)).toEqual(["positive", "negative"]);
        const host = await modelLogits(MODEL_DIR, writeSmokeTsv(), [staticModel]);
        compiled.results.forEach((r, i) => {
          const want = softmax(host.logits[staticModel]![i]!);
          expectClose(r.probabilities, want, { atol: 0.005, what: `${board} compiled: ${smokeTexts[i]}` });
        });
      }, 1_800_000);
    });
  }

  test("figures", async () => {
    const rows: string[] = [];
    for (const board of BOARDS) {
      const run = await runs.get(board);
      if (run === undefined) continue;
      const l = run.logits.logits;
      rows.push(
        `${board}/${BOARD_CPU[board]}: max|Δlogit| vs x86 fp32 ${maxAbsDiff(l[FP32]!, hostLogits.logits[FP32]!).toExponential(2)}, ` +
          `static ${maxAbsDiff(l[run.staticModel]!, hostLogits.logits[hostStatic]!).toFixed(4)} ` +
          `(x86 model ${maxAbsDiff(l[hostStatic]!, hostLogits.logits[hostStatic]!).toFixed(4)}), ` +
          `dynamic ${maxAbsDiff(l[run.dynamicModel]!, hostLogits.logits[hostDynamic]!).toFixed(4)}; ` +
          Object.entries(run.seconds)
            .map(([k, s]) => `${k} ${s.toFixed(0)} s`)
            .join(", "),
      );
    }
    console.log(rows.join("\n"));
    expect(rows.length).toBe(BOARDS.length);
  }, 1_800_000);
});

function writeSmokeTsv(): string {
  const path = join(work, "smoke.tsv");
  writeFileSync(path, `label\tsentence\n${smokeTexts.map((t) => `\t${t}`).join("\n")}\n`);
  return path;
}
