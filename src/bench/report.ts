/**
 * Renderings of a {@link BenchResult}: an aligned plain-text table for the
 * terminal, a JSON document for machines (with the machine it ran on), and a
 * markdown table for the README.
 */
import { arch, cpus, loadavg, release, totalmem, type } from "node:os";
import { existsSync, readFileSync } from "node:fs";
import type { QuantdErrorJSON } from "../errors.ts";
import { ORT_VERSION } from "../runtime/ort-session.ts";
import { shapeLabel } from "./inputs.ts";
import type { BenchResult, BenchRow } from "./measure.ts";
import { median } from "./stats.ts";

/** The machine a benchmark ran on. */
export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryBytes: number;
  /** e.g. `Linux 6.1.0 x64 (Debian GNU/Linux 12)`. */
  os: string;
  bun: string;
  onnxruntime: string;
  /** ISO-8601 time the document was made. */
  date: string;
  /**
   * 1, 5 and 15 minute load averages when the document was made: a busy machine
   * widens p90/p99, and this says whether it was busy.
   */
  loadAverage?: number[];
}

/** The JSON document `--json` writes and `bench/results/latest.json` holds. */
export interface BenchDocument {
  /** Bumped when a field changes meaning. */
  schema: "quantd-bench/1";
  machine: MachineInfo;
  runs: number;
  warmup: number;
  seed: number;
  realText: boolean;
  rows: BenchRow[];
  /** Per model (other than a family's first): median over shapes and threads of the per-pair median ratio. */
  medianRatios: { model: string; baseline: string; medianOfPairs: number }[];
  /** Free-form lines (skipped rows, what was not measured). */
  notes: string[];
}

function osRelease(): string | undefined {
  try {
    if (!existsSync("/etc/os-release")) return undefined;
    const m = /^PRETTY_NAME="?([^"\n]*)"?/m.exec(readFileSync("/etc/os-release", "utf8"));
    return m?.[1];
  } catch {
    return undefined;
  }
}

/** Describes this machine and the runtimes. */
export function machineInfo(now: Date = new Date()): MachineInfo {
  const cpuList = cpus();
  const distro = osRelease();
  return {
    cpu: cpuList[0]?.model.trim() ?? "unknown",
    cores: cpuList.length,
    memoryBytes: totalmem(),
    os: `${type()} ${release()} ${arch()}${distro !== undefined ? ` (${distro})` : ""}`,
    bun: process.versions["bun"] ?? "not bun",
    onnxruntime: ORT_VERSION,
    date: now.toISOString(),
    loadAverage: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** Per model, the median over its rows of the per-pair median ratio to its family's first model. */
export function medianRatios(result: BenchResult): BenchDocument["medianRatios"] {
  const byModel = new Map<string, { baseline: string; values: number[] }>();
  for (const row of result.rows) {
    if (row.status !== "ok" || row.ratio === undefined) continue;
    const entry = byModel.get(row.model) ?? { baseline: row.ratio.baseline, values: [] };
    entry.values.push(row.ratio.medianOfPairs);
    byModel.set(row.model, entry);
  }
  return [...byModel].map(([model, e]) => ({ model, baseline: e.baseline, medianOfPairs: median(e.values) }));
}

/** Builds the JSON document. */
export function toBenchDocument(
  result: BenchResult,
  machine: MachineInfo = machineInfo(),
  notes: string[] = [],
): BenchDocument {
  return {
    schema: "quantd-bench/1",
    machine,
    runs: result.runs,
    warmup: result.warmup,
    seed: result.seed,
    realText: result.realText,
    rows: result.rows,
    medianRatios: medianRatios(result),
    notes,
  };
}

const MB = 1024 * 1024;
const ms = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;

function errText(e: QuantdErrorJSON): string {
  const causes = e.causes !== undefined && e.causes.length > 0 ? ` (${e.causes.join("; ")})` : "";
  return `error ${e.code}: ${e.message}${causes}`.replace(/\s*\n\s*/g, " ");
}

/** The cells of one row, shared by the terminal and markdown tables. */
function cells(row: BenchRow, withQuality: boolean): string[] {
  const head = [row.model, shapeLabel(row.shape), String(row.threads)];
  if (row.status === "error") {
    return [...head, errText(row.error)];
  }
  const mem =
    row.memory === undefined
      ? "-"
      : "error" in row.memory
        ? row.memory.error.code
        : (row.memory.peakRssBytes / MB).toFixed(0);
  const ratio = row.ratio === undefined ? "-" : `${row.ratio.medianOfPairs.toFixed(2)}×`;
  const out = [
    ...head,
    ms(row.latency.p50),
    ms(row.latency.p90),
    ms(row.latency.p99),
    row.throughput.toFixed(1),
    row.loadMs.toFixed(0),
    (row.sizeBytes / MB).toFixed(1),
    mem,
    ratio,
  ];
  if (withQuality) {
    const q = row.quality;
    if (q === undefined) out.push("-", "-");
    else if ("error" in q) out.push(q.error.code, "-");
    else out.push(pct(q.accuracy), q.agreement === undefined ? "-" : pct(q.agreement));
  }
  return out;
}

const HEADER = [
  "model",
  "shape",
  "thr",
  "p50 ms",
  "p90 ms",
  "p99 ms",
  "seq/s",
  "load ms",
  "size MB",
  "peak RSS MB",
  "vs first",
];
const QUALITY_HEADER = ["accuracy", "agreement"];

function hasQuality(result: BenchResult): boolean {
  return result.realText || result.rows.some((r) => r.status === "ok" && r.quality !== undefined);
}

/**
 * An aligned plain-text table (no colours, no box drawing, so it survives logs
 * and copy-paste). Error rows show their code and message in place of figures.
 * Below it, the median ratio of each model to its family's first model.
 */
export function renderTerminalTable(result: BenchResult): string[] {
  const withQuality = hasQuality(result);
  const header = withQuality ? [...HEADER, ...QUALITY_HEADER] : HEADER;
  const body = result.rows.map((r) => cells(r, withQuality));
  // Error rows share only the identity columns (model, shape, threads) with the others.
  const widths = header.map((h, i) =>
    Math.max(h.length, ...body.filter((c) => i < 3 || c.length === header.length).map((c) => c[i]!.length)),
  );
  const line = (c: string[]): string =>
    c
      .map((cell, i) =>
        i === 0 ? cell.padEnd(widths[i]!) : i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!),
      )
      .join("  ")
      .trimEnd();
  const lines = [line(header)];
  for (const c of body) {
    // An error row: identity columns aligned, then the message in one piece.
    lines.push(c.length === header.length ? line(c) : `${line(c.slice(0, 3))}  ${c[3]}`);
  }
  const ratios = medianRatios(result);
  if (ratios.length > 0) {
    lines.push("");
    for (const r of ratios) {
      lines.push(
        `${r.model} / ${r.baseline}: median latency ratio ${r.medianOfPairs.toFixed(3)}× ` +
          `(${r.medianOfPairs < 1 ? `${(1 / r.medianOfPairs).toFixed(2)}× faster` : `${r.medianOfPairs.toFixed(2)}× slower`})`,
      );
    }
  }
  return lines;
}

function mdEscape(s: string): string {
  return s.replace(/\|/g, "\\|");
}

/** A markdown document: the machine, the date, the table, the median ratios and the notes. */
export function renderMarkdown(doc: BenchDocument): string {
  const result: BenchResult = {
    rows: doc.rows,
    runs: doc.runs,
    warmup: doc.warmup,
    seed: doc.seed,
    realText: doc.realText,
  };
  const withQuality = hasQuality(result);
  const header = withQuality ? [...HEADER, ...QUALITY_HEADER] : HEADER;
  const m = doc.machine;
  const lines = [
    `Measured ${m.date.slice(0, 16).replace("T", " ")} UTC on ${m.cpu} (${m.cores} cores, ` +
      `${(m.memoryBytes / 1024 ** 3).toFixed(0)} GB), ${m.os}; Bun ${m.bun}, onnxruntime ${m.onnxruntime}` +
      `${m.loadAverage !== undefined ? `; load average ${m.loadAverage.join(" / ")} (1/5/15 min) at the end` : ""}. ` +
      `${doc.warmup} warm-up and ${doc.runs} timed runs per row, models interleaved; ` +
      `${doc.realText ? "real tokenized text" : "synthetic token ids unless noted below"}. ` +
      "Peak RSS is the high-water mark of a fresh process that loads the model and runs it (runtime included). " +
      "`vs first` is the median of per-run latency ratios to the first model of the same family.",
    "",
    `| ${header.join(" | ")} |`,
    `|${header.map((_, i) => (i < 3 ? "---" : "---:")).join("|")}|`,
  ];
  for (const row of doc.rows) {
    const c = cells(row, withQuality).map(mdEscape);
    while (c.length < header.length) c.push("");
    lines.push(`| ${c.join(" | ")} |`);
  }
  if (doc.medianRatios.length > 0) {
    lines.push("", "Median latency ratios (over shapes and threads):", "");
    for (const r of doc.medianRatios)
      lines.push(`- ${r.model} / ${r.baseline}: ${r.medianOfPairs.toFixed(3)}×`);
  }
  if (doc.notes.length > 0) {
    lines.push("", "Notes:", "");
    for (const n of doc.notes) lines.push(`- ${n}`);
  }
  return `${lines.join("\n")}\n`;
}
