/**
 * A hand-written SVG chart of a benchmark: one panel of p50 latency bars with a
 * whisker up to p90, one panel of peak resident memory, one group of bars per
 * (shape, threads), one colour per model with a legend. No dependency: the
 * markup is small and every element is labelled so it reads without hovering.
 */
import { shapeLabel } from "./inputs.ts";
import type { BenchRow, BenchRowOk } from "./measure.ts";

/** Options for {@link renderChartSvg}. */
export interface ChartOptions {
  /** Title above the chart. @defaultValue "quantd bench" */
  title?: string;
  /** A smaller line under the title (machine, date). */
  subtitle?: string;
}

/** Width of one character of a 12 px group label, a little above DejaVu Sans's average so labels never touch. */
const GROUP_LABEL_CHAR_W = 7.4;

// Colour-blind-safe palette (Okabe–Ito), in the order models are listed.
const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function fmt(x: number): string {
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/** Ticks for an axis from 0 (linear) or a power of ten (log) to at least `max`. */
function ticks(max: number, log: boolean, min: number): number[] {
  if (log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(min)); 10 ** e <= max * 10; e++) {
      out.push(10 ** e);
      if (10 ** e >= max) break;
    }
    return out;
  }
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = 0; v <= max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

interface Panel {
  title: string;
  unit: string;
  value: (r: BenchRowOk) => number | undefined;
  whisker?: (r: BenchRowOk) => number | undefined;
}

/**
 * Renders the chart. Latency uses a logarithmic axis when the bars span more
 * than a factor of 30 (a BERT-base next to a BERT-Mini would otherwise flatten
 * the small bars to nothing); the axis title says so.
 */
export function renderChartSvg(rows: readonly BenchRow[], opts: ChartOptions = {}): string {
  const models = [...new Set(rows.map((r) => r.model))];
  const groups: { key: string; label: string }[] = [];
  for (const r of rows) {
    const key = `${r.shape.batch}x${r.shape.seq}t${r.threads}`;
    if (!groups.some((g) => g.key === key))
      groups.push({ key, label: `${shapeLabel(r.shape)} · ${r.threads} thr` });
  }
  const rowAt = (g: string, m: string): BenchRow | undefined =>
    rows.find((r) => r.model === m && `${r.shape.batch}x${r.shape.seq}t${r.threads}` === g);

  const panels: Panel[] = [
    {
      title: "Latency p50 (whisker: p90)",
      unit: "ms",
      value: (r) => r.latency.p50,
      whisker: (r) => r.latency.p90,
    },
    {
      title: "Peak resident memory of a fresh process",
      unit: "MB",
      value: (r) =>
        r.memory === undefined || "error" in r.memory ? undefined : r.memory.peakRssBytes / (1024 * 1024),
    },
  ];

  const barW = 22;
  const barGap = 4;
  const groupGap = 28;
  // A group holds only the models that have a row at its shape (BERT-base may run fewer shapes than BERT-Mini).
  const members = groups.map((g) => models.filter((m) => rowAt(g.key, m) !== undefined));
  const widthOf = (n: number): number => Math.max(barW, n * (barW + barGap) - barGap);
  // A group's slot is as wide as its bars or its label, whichever is wider, so that neighbouring
  // labels never overlap (2 models × 2 shapes: 48 px of bars under a 100 px label).
  const labelW = (label: string): number => Math.ceil(label.length * GROUP_LABEL_CHAR_W);
  const slotW = groups.map((g, gi) => Math.max(widthOf(members[gi]!.length), labelW(g.label)));
  const groupXs: number[] = [];
  let acc = 0;
  for (const w of slotW) {
    groupXs.push(acc);
    acc += w + groupGap;
  }
  const barsW = acc + groupGap;
  const left = 70;
  const right = 24;
  // Wide enough for the bars and for the title lines (approximate glyph widths of the fonts used).
  const textW = Math.max((opts.subtitle?.length ?? 0) * 6.4, (opts.title ?? "quantd bench").length * 10.5);
  const plotW = Math.ceil(Math.max(360, textW - right, barsW));
  const width = left + plotW + right;
  // With few groups the minimum width leaves room: centre the groups rather than crowd the left.
  const slack = plotW - barsW;
  const panelH = 230;
  const legendRowH = 20;
  const legendCols = Math.max(1, Math.floor((width - left) / 230));
  const legendH = Math.ceil(models.length / legendCols) * legendRowH;
  const top = 56 + legendH + 40;
  const panelGap = 78;
  const height = top + panels.length * (panelH + panelGap) - panelGap + 40;

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(
    `<text x="${left}" y="24" font-size="17" font-weight="bold">${esc(opts.title ?? "quantd bench")}</text>`,
  );
  if (opts.subtitle !== undefined) {
    out.push(`<text x="${left}" y="42" font-size="11" fill="#555">${esc(opts.subtitle)}</text>`);
  }
  models.forEach((m, i) => {
    const x = left + (i % legendCols) * 230;
    const y = 56 + Math.floor(i / legendCols) * legendRowH;
    out.push(
      `<g class="legend"><rect x="${x}" y="${y}" width="14" height="14" fill="${PALETTE[i % PALETTE.length]}"/>` +
        `<text x="${x + 20}" y="${y + 11}">${esc(m)}</text></g>`,
    );
  });

  panels.forEach((panel, pi) => {
    const y0 = top + pi * (panelH + panelGap);
    const yBase = y0 + panelH;
    const vals: number[] = [];
    for (const r of rows) {
      if (r.status !== "ok") continue;
      const v = panel.value(r);
      const w = panel.whisker?.(r);
      if (v !== undefined && v > 0) vals.push(v);
      if (w !== undefined && w > 0) vals.push(w);
    }
    const max = vals.length > 0 ? Math.max(...vals) : 1;
    const min = vals.length > 0 ? Math.min(...vals) : 1;
    const log = max / min > 30;
    const tickList = ticks(max, log, min);
    const lo = log ? tickList[0]! : 0;
    const hi = tickList.at(-1)!;
    const scale = (v: number): number => {
      const f = log
        ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))
        : (v - lo) / (hi - lo);
      return yBase - Math.max(0, Math.min(1, f)) * panelH;
    };
    out.push(`<g class="panel" data-panel="${pi === 0 ? "latency" : "memory"}">`);
    out.push(
      `<text x="${left}" y="${y0 - 12}" font-size="14" font-weight="bold">${esc(panel.title)}</text>`,
      `<text transform="translate(16 ${y0 + panelH / 2}) rotate(-90)" text-anchor="middle" fill="#333">` +
        `${esc(panel.unit)}${log ? " (log scale)" : ""}</text>`,
    );
    for (const t of tickList) {
      const y = scale(t);
      out.push(
        `<line x1="${left}" x2="${left + plotW}" y1="${y}" y2="${y}" stroke="#e3e3e3"/>`,
        `<text x="${left - 6}" y="${y + 4}" text-anchor="end" fill="#333">${Number(t.toPrecision(6))}</text>`,
      );
    }
    out.push(`<line x1="${left}" x2="${left + plotW}" y1="${yBase}" y2="${yBase}" stroke="#333"/>`);
    out.push(`<line x1="${left}" x2="${left}" y1="${y0}" y2="${yBase}" stroke="#333"/>`);
    groups.forEach((g, gi) => {
      const slotX = left + groupGap + slack / 2 + groupXs[gi]!;
      const groupW = widthOf(members[gi]!.length);
      const gx = slotX + (slotW[gi]! - groupW) / 2;
      out.push(
        `<text class="group-label" x="${slotX + slotW[gi]! / 2}" y="${yBase + 18}" text-anchor="middle" fill="#222">${esc(g.label)}</text>`,
      );
      members[gi]!.forEach((m, slot) => {
        const mi = models.indexOf(m);
        const x = gx + slot * (barW + barGap);
        const r = rowAt(g.key, m);
        const colour = PALETTE[mi % PALETTE.length]!;
        const v = r?.status === "ok" ? panel.value(r) : undefined;
        if (r === undefined) return;
        if (r.status !== "ok" || v === undefined || !(v > 0)) {
          const why = r.status === "ok" ? "n/a" : "error";
          out.push(
            `<text x="${x + barW / 2}" y="${yBase - 6}" text-anchor="middle" font-size="10" fill="#b00" ` +
              `transform="rotate(-90 ${x + barW / 2} ${yBase - 6})" dy="4">${why}</text>`,
          );
          return;
        }
        const y = scale(v);
        out.push(
          `<rect class="bar" data-model="${esc(m)}" x="${x}" y="${y.toFixed(1)}" width="${barW}" ` +
            `height="${(yBase - y).toFixed(1)}" fill="${colour}" stroke="#333" stroke-width="0.5"><title>${esc(m)} ${esc(g.label)}: ` +
            `${fmt(v)} ${panel.unit}</title></rect>`,
        );
        const w = panel.whisker?.(r);
        let labelY = y;
        if (w !== undefined && w > v) {
          const wy = scale(w);
          const cx = x + barW / 2;
          out.push(
            `<line x1="${cx}" x2="${cx}" y1="${y.toFixed(1)}" y2="${wy.toFixed(1)}" stroke="#222"/>`,
            `<line x1="${cx - 5}" x2="${cx + 5}" y1="${wy.toFixed(1)}" y2="${wy.toFixed(1)}" stroke="#222"/>`,
          );
          labelY = wy;
        }
        out.push(
          `<text x="${x + barW / 2}" y="${(labelY - 4).toFixed(1)}" text-anchor="middle" font-size="9" ` +
            `fill="#222">${fmt(v)}</text>`,
        );
      });
    });
    out.push("</g>");
  });
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}
