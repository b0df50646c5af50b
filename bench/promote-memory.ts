/**
 * What staging a promotion's copy costs in resident memory: the registry's
 * copy of a self-contained model (a streamed byte copy) against that of the
 * same model saved as `model.onnx` + `model.onnx_data` (its weights written
 * inline into one file), and of that model with 4× its weights (an unused
 * initializer added), to see whether the cost grows with the model. Each copy
 * runs in a fresh child process, after its modules are loaded, with the
 * kernel's high-water mark reset (`/proc/self/clear_refs` 5), so the peak is
 * the copy's own: cold (the ONNX codec's schema is built on first use, once
 * per agent process) and warm (the codec used once before).
 *
 * Usage: `bun bench/promote-memory.ts [MODEL] [--runs N] [--out FILE]` (the
 * shipped BERT-Mini by default; `--out bench/results/promote-memory.md` keeps
 * the table). Prints RSS before, after and at the peak; never asserted.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { stageCopy } from "../src/agent/model-files.ts";
import { readProcessMemory } from "../src/core/process-memory.ts";
import { median } from "../src/core/stats.ts";
import { externalDataFiles, loadModel, saveModel } from "../src/onnx/codec.ts";
import { DataType } from "../src/onnx/types.ts";

const MB = 1048576;
/** The BERT-Mini the repository ships. */
const DEFAULT_MODEL = resolve(import.meta.dir, "../calib/models/sst2-bert-mini/model.onnx");

/** One copy's figures, in bytes and ms. */
interface ChildFigures {
  before: number;
  after: number;
  peak: number;
  ms: number;
  peakReset: boolean;
}

/** The child: one stageCopy of `src` into `dir`, its memory around it; `warm`: the codec used once before. */
async function child(src: string, dir: string, warm: boolean): Promise<void> {
  if (warm) {
    await externalDataFiles(src);
    Bun.gc(true);
  }
  let peakReset = true;
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    peakReset = false; // an old kernel: the peak then includes start-up
  }
  const before = readProcessMemory().rssBytes;
  const t0 = performance.now();
  const staged = await stageCopy(src, dir, Number.POSITIVE_INFINITY);
  const ms = performance.now() - t0;
  const m = readProcessMemory();
  rmSync(staged.tmpPath, { force: true });
  const out: ChildFigures = { before, after: m.rssBytes, peak: m.peakRssBytes, ms, peakReset };
  console.log(JSON.stringify(out));
}

async function runChild(src: string, dir: string, warm: boolean): Promise<ChildFigures> {
  const p = Bun.spawn([process.execPath, import.meta.path, "--child", src, dir, warm ? "warm" : "cold"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  const text = await new Response(p.stdout).text();
  if ((await p.exited) !== 0) throw new Error(`child failed on ${src}`);
  return JSON.parse(text.trim().split("\n").at(-1)!) as ChildFigures;
}

function row(name: string, bytes: number, cold: ChildFigures[], warm: ChildFigures[]): string {
  const mb = (xs: number[]) => (median(xs) / MB).toFixed(1);
  const growth = (runs: ChildFigures[]) => mb(runs.map((r) => r.peak - r.before));
  return (
    `| ${name} | ${(bytes / MB).toFixed(1)} MB | ${mb(cold.map((r) => r.before))} MB | ` +
    `${mb(cold.map((r) => r.after))} MB | ${mb(cold.map((r) => r.peak))} MB | +${growth(cold)} MB | ` +
    `+${growth(warm)} MB | ${median(cold.map((r) => r.ms)).toFixed(0)} ms |`
  );
}

/** `model` saved as model.onnx + model.onnx_data in `dir`, with `padBytes` more weights (an unused initializer). */
async function externalCopy(
  model: string,
  dir: string,
  padBytes: number,
): Promise<{ path: string; bytes: number }> {
  mkdirSync(dir);
  const m = await loadModel(model);
  if (padBytes > 0) {
    const pad = new Uint8Array(padBytes).map((_, i) => (i * 2654435761) >>> 24);
    m.graph.initializer.push({
      name: "padding",
      dataType: DataType.FLOAT,
      dims: [padBytes / 4],
      rawData: pad,
    });
  }
  const path = join(dir, "model.onnx");
  await saveModel(m, path, { externalData: { location: "model.onnx_data" } });
  return { path, bytes: statSync(path).size + statSync(join(dir, "model.onnx_data")).size };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: {
      runs: { type: "string", default: "3" },
      out: { type: "string" },
      child: { type: "boolean", default: false },
    },
    allowPositionals: true,
  });
  if (values.child) return child(positionals[0]!, positionals[1]!, positionals[2] === "warm");
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1)
    throw new Error(`--runs must be a positive integer, got ${values.runs}`);
  const out = values.out;
  const model = positionals[0] ?? DEFAULT_MODEL;
  try {
    statSync(model);
  } catch {
    console.error(`skipped: no model at ${model}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "quantd-promote-memory-"));
  try {
    const size = statSync(model).size;
    const external = await externalCopy(model, join(dir, "external"), 0);
    const larger = await externalCopy(model, join(dir, "larger"), Math.floor((3 * size) / 4) * 4);
    const cases: [string, string, number][] = [
      ["self-contained (byte copy)", model, size],
      ["model.onnx + model.onnx_data (inlined)", external.path, external.bytes],
      ["the same, 4× the weights (inlined)", larger.path, larger.bytes],
    ];
    const lines: string[] = [];
    let reset = true;
    for (const [name, src, bytes] of cases) {
      const cold: ChildFigures[] = [];
      const warm: ChildFigures[] = [];
      for (let i = 0; i < runs; i++) {
        cold.push(await runChild(src, join(dir, "models"), false));
        warm.push(await runChild(src, join(dir, "models"), true));
      }
      reset &&= [...cold, ...warm].every((r) => r.peakReset);
      lines.push(row(name, bytes, cold, warm));
    }
    const when = new Date().toISOString().slice(0, 16).replace("T", " ");
    const table = [
      `Staging a promotion's copy of ${model.replace(`${resolve(import.meta.dir, "..")}/`, "")}: ${when} UTC, ` +
        `Bun ${Bun.version}, median of ${runs} fresh processes${reset ? "" : " (peak not reset: it includes start-up)"}.`,
      "",
      "| copy | model | RSS before | RSS after | peak RSS | peak − before | same, codec warm | time |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
      ...lines,
    ];
    console.log(table.join("\n"));
    if (out !== undefined) writeFileSync(out, `${table.join("\n")}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
