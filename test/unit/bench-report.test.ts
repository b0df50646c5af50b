import { describe, expect, test } from "bun:test";
import { renderChartSvg } from "../../src/bench/chart.ts";
import type { BenchResult, BenchRow, BenchRowOk } from "../../src/bench/measure.ts";
import {
  type MachineInfo,
  medianRatios,
  renderMarkdown,
  renderTerminalTable,
  toBenchDocument,
} from "../../src/bench/report.ts";
import { summarize } from "../../src/bench/stats.ts";

const MB = 1024 * 1024;

function okRow(model: string, seq: number, times: number[], peakMb: number, ratio?: number): BenchRowOk {
  const row: BenchRowOk = {
    model,
    path: `/m/${model}.onnx`,
    family: "default",
    shape: { batch: 1, seq },
    threads: 1,
    status: "ok",
    latency: summarize(times),
    latenciesMs: times,
    throughput: 1000 / summarize(times).mean,
    loadMs: 120,
    sizeBytes: 30 * MB,
    memory: {
      peakRssBytes: peakMb * MB,
      rssBytes: peakMb * MB,
      baselineRssBytes: 30 * MB,
      loadMs: 150,
      source: "proc-status",
    },
  };
  if (ratio !== undefined) row.ratio = { baseline: "fp32", p50: ratio, medianOfPairs: ratio };
  return row;
}

const rows: BenchRow[] = [
  okRow("fp32", 32, [10, 11, 12], 110),
  okRow("int8", 32, [5, 6, 7], 80, 0.5),
  {
    model: "broken",
    path: "/m/broken.onnx",
    family: "default",
    shape: { batch: 1, seq: 32 },
    threads: 1,
    status: "error",
    error: { code: "MODEL_LOAD_FAILED", message: "onnxruntime could not load /m/broken.onnx" },
  },
  okRow("fp32", 128, [40, 41, 42], 115),
  okRow("int8", 128, [16, 17, 18], 85, 0.4),
];
const result: BenchResult = { rows, runs: 3, warmup: 1, seed: 1, realText: false };
const machine: MachineInfo = {
  cpu: "Test CPU",
  cores: 4,
  memoryBytes: 8 * 1024 ** 3,
  os: "Linux test",
  bun: "1.4.5",
  onnxruntime: "1.30.0",
  date: "2026-01-02T03:04:05.000Z",
};

describe("report", () => {
  test("terminal table: aligned columns, error row with its code, median ratio line", () => {
    const lines = renderTerminalTable(result);
    expect(lines[0]).toMatch(/^model\s+shape\s+thr\s+p50 ms/);
    const fp = lines.find((l) => l.startsWith("fp32") && l.includes("b1×s32"))!;
    expect(fp).toContain("11.0");
    expect(fp).toContain("110");
    expect(lines.find((l) => l.startsWith("broken"))).toContain("error MODEL_LOAD_FAILED");
    // the figures line up under their header: same length for every measured row
    const measured = lines.filter((l) => /^(fp32|int8)\s+b1/.test(l));
    expect(new Set(measured.map((l) => l.length)).size).toBe(1);
    expect(lines.at(-1)).toContain("int8 / fp32: median latency ratio 0.450×");
  });
  test("median ratios over shapes", () => {
    expect(medianRatios(result)).toEqual([{ model: "int8", baseline: "fp32", medianOfPairs: 0.45 }]);
  });
  test("JSON document and markdown name the machine and the date", () => {
    const doc = JSON.parse(JSON.stringify(toBenchDocument(result, machine, ["a note"])));
    expect(doc.schema).toBe("quantd-bench/1");
    expect(doc.machine.cpu).toBe("Test CPU");
    expect(doc.rows).toHaveLength(5);
    expect(doc.rows[2].error.code).toBe("MODEL_LOAD_FAILED");
    const md = renderMarkdown(doc);
    expect(md).toContain("2026-01-02 03:04 UTC on Test CPU (4 cores");
    expect(md).toContain("| model | shape | thr | p50 ms |");
    expect(md.split("\n").filter((l) => l.startsWith("| int8 "))).toHaveLength(2);
    expect(md).toContain("- a note");
  });
});

describe("chart", () => {
  const svg = renderChartSvg(rows, { title: "t", subtitle: "s" });
  test("is one SVG document with a bar per measured row in each panel", () => {
    expect(svg.startsWith("<svg ")).toBe(true);
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
    // 4 measured rows × 2 panels (latency and memory)
    expect(svg.match(/<rect class="bar"/g)).toHaveLength(8);
    expect(svg.match(/data-model="fp32"/g)).toHaveLength(4);
    expect(svg.match(/data-model="broken"/g)).toBeNull();
    expect(svg).toContain(">error</text>");
  });
  test("has a legend entry per model and a label per shape group", () => {
    for (const m of ["fp32", "int8", "broken"]) expect(svg).toContain(`>${m}</text></g>`);
    expect(svg.match(/>b1×s32 · 1 thr</g)).toHaveLength(2);
    expect(svg.match(/>b1×s128 · 1 thr</g)).toHaveLength(2);
  });
  test("bar heights follow the values (linear axis when the span is small)", () => {
    const h = (model: string, seq: number): number => {
      const re = new RegExp(
        `data-model="${model}"[^>]*height="([\\d.]+)"[^>]*><title>${model} b1×s${seq}[^<]*ms`,
      );
      return Number(re.exec(svg)![1]);
    };
    expect(h("fp32", 32)).toBeGreaterThan(h("int8", 32));
    expect(h("fp32", 128) / h("fp32", 32)).toBeCloseTo(41 / 11, 1);
  });
  test("escapes markup in labels", () => {
    const evil = renderChartSvg([okRow("<b>&", 8, [1], 10)]);
    expect(evil).toContain("&lt;b&gt;&amp;");
    expect(evil).not.toContain("<b>&");
  });
});
