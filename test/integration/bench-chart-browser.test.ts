/**
 * The bench chart as a browser draws it (Debian's chromium, driven by
 * playwright-core): the group labels under the bars never overlap — two
 * models × two shapes was the case where they did — and every label stays
 * inside the picture. Boxes come from the rendered text, not from estimates.
 * Without chromium the test skips.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";
import { renderChartSvg } from "../../src/bench/chart.ts";
import type { BenchRow } from "../../src/bench/measure.ts";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
if (CHROMIUM === undefined) console.warn("chromium not installed: bench chart browser test skipped");

/** A measured row with the figures the chart draws. */
function row(model: string, batch: number, seq: number, threads: number, p50: number): BenchRow {
  return {
    model,
    path: `/models/${model}.onnx`,
    family: "default",
    shape: { batch, seq },
    threads,
    status: "ok",
    latency: {
      n: 5,
      mean: p50,
      min: p50 * 0.9,
      max: p50 * 1.4,
      stdev: 0.1,
      p50,
      p90: p50 * 1.2,
      p99: p50 * 1.3,
    },
    latenciesMs: [p50],
    throughput: (batch * 1000) / p50,
    loadMs: 120,
    sizeBytes: 30e6,
    memory: {
      peakRssBytes: 118 * 1048576,
      rssBytes: 110 * 1048576,
      baselineRssBytes: 40 * 1048576,
      loadMs: 130,
      source: "proc-status",
    },
  } as BenchRow;
}

let browser: Browser | undefined;
beforeAll(async () => {
  if (CHROMIUM !== undefined)
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
});
afterAll(async () => {
  await browser?.close();
});

const CASES: [string, BenchRow[]][] = [
  [
    "2 models × 2 shapes",
    [
      row("model", 1, 32, 2, 22),
      row("model.int8", 1, 32, 2, 2),
      row("model", 1, 128, 2, 50),
      row("model.int8", 1, 128, 2, 23),
    ],
  ],
  [
    "1 model × 6 shapes × 2 thread counts",
    [1, 8].flatMap((batch) =>
      [32, 128, 512].flatMap((seq) => [1, 4].map((t) => row("model", batch, seq, t, seq / 10 + batch))),
    ),
  ],
];

for (const [name, rows] of CASES) {
  test.skipIf(CHROMIUM === undefined)(
    `${name}: group labels do not overlap and fit the picture`,
    async () => {
      const page = await browser!.newPage();
      try {
        await page.setContent(renderChartSvg(rows, { subtitle: "test machine" }));
        // A string, evaluated in the page: the DOM types are not in this project's TypeScript lib.
        const { boxes, width } = (await page.evaluate(`(() => {
        const svg = document.querySelector("svg");
        return {
          width: svg.width.baseVal.value,
          boxes: [...document.querySelectorAll("text.group-label")].map((t) => {
            const b = t.getBBox();
            return { panel: t.closest("g.panel").getAttribute("data-panel"), x: b.x, right: b.x + b.width };
          }),
        };
      })()`)) as { width: number; boxes: { panel: string; x: number; right: number }[] };
        const groups = new Set(rows.map((r) => `${r.shape.batch}×${r.shape.seq}×${r.threads}`)).size;
        expect(boxes.length).toBe(groups * 2);
        for (const panel of ["latency", "memory"]) {
          const mine = boxes.filter((b) => b.panel === panel).sort((a, b) => a.x - b.x);
          for (let i = 1; i < mine.length; i++) expect(mine[i]!.x).toBeGreaterThan(mine[i - 1]!.right + 2);
          for (const b of mine) {
            expect(b.x).toBeGreaterThanOrEqual(0);
            expect(b.right).toBeLessThanOrEqual(width);
          }
        }
      } finally {
        await page.close();
      }
    },
  );
}
