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

/** Pixel sizes of the chart. */
const BAR_W = 22;
const BAR_GAP = 4;
const GROUP_GAP = 28;
const LEFT = 70;
const RIGHT = 24;
const PANEL_H = 230;
const PANEL_GAP = 78;
const LEGEND_ROW_H = 20;
const LEGEND_COL_W = 230;

const PANELS: readonly Panel[] = [
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

/** One group of bars: a (shape, threads) and the models that have a row there. */
interface Group {
  key: string;
  label: string;
  members: string[];
  /** Left edge of the group's slot, from the first slot. */
  x: number;
  /** Width of the slot: its bars or its label, whichever is wider. */
  slotW: number;
}

/** Where everything goes. */
interface Layout {
  rows: readonly BenchRow[];
  models: string[];
  groups: Group[];
  plotW: number;
  width: number;
  height: number;
  /** Top of the first panel. */
  top: number;
  /** Room left over by few groups, split on both sides to centre them. */
  slack: number;
  legendCols: number;
}

function groupKey(r: BenchRow): string {
  return `${r.shape.batch}x${r.shape.seq}t${r.threads}`;
}

function rowAt(rows: readonly BenchRow[], key: string, model: string): BenchRow | undefined {
  return rows.find((r) => r.model === model && groupKey(r) === key);
}

/** Width of `n` bars side by side. */
function barsWidth(n: number): number {
  return Math.max(BAR_W, n * (BAR_W + BAR_GAP) - BAR_GAP);
}

/** The groups in row order, each with its models and slot. */
function groupsOf(rows: readonly BenchRow[], models: readonly string[]): Group[] {
  const groups: Group[] = [];
  let x = 0;
  for (const r of rows) {
    const key = groupKey(r);
    if (groups.some((g) => g.key === key)) continue;
    const label = `${shapeLabel(r.shape)} · ${r.threads} thr`;
    // A group holds only the models that have a row at its shape (BERT-base may run fewer shapes than BERT-Mini).
    const members = models.filter((m) => rowAt(rows, key, m) !== undefined);
    // A group's slot is as wide as its bars or its label, whichever is wider, so that neighbouring
    // labels never overlap (2 models × 2 shapes: 48 px of bars under a 100 px label).
    const slotW = Math.max(barsWidth(members.length), Math.ceil(label.length * GROUP_LABEL_CHAR_W));
    groups.push({ key, label, members, x, slotW });
    x += slotW + GROUP_GAP;
  }
  return groups;
}

function layoutOf(rows: readonly BenchRow[], opts: ChartOptions): Layout {
  const models = [...new Set(rows.map((r) => r.model))];
  const groups = groupsOf(rows, models);
  const last = groups.at(-1);
  const barsW = (last === undefined ? 0 : last.x + last.slotW + GROUP_GAP) + GROUP_GAP;
  // Wide enough for the bars and for the title lines (approximate glyph widths of the fonts used).
  const textW = Math.max((opts.subtitle?.length ?? 0) * 6.4, (opts.title ?? "quantd bench").length * 10.5);
  const plotW = Math.ceil(Math.max(360, textW - RIGHT, barsW));
  const width = LEFT + plotW + RIGHT;
  const legendCols = Math.max(1, Math.floor((width - LEFT) / LEGEND_COL_W));
  const legendH = Math.ceil(models.length / legendCols) * LEGEND_ROW_H;
  const top = 56 + legendH + 40;
  const height = top + PANELS.length * (PANEL_H + PANEL_GAP) - PANEL_GAP + 40;
  // With few groups the minimum width leaves room: centre the groups rather than crowd the left.
  return { rows, models, groups, plotW, width, height, top, slack: plotW - barsW, legendCols };
}

/** The SVG element, background, titles and legend. */
function headerSvg(layout: Layout, opts: ChartOptions): string[] {
  const { width, height } = layout;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${LEFT}" y="24" font-size="17" font-weight="bold">${esc(opts.title ?? "quantd bench")}</text>`,
  ];
  if (opts.subtitle !== undefined) {
    out.push(`<text x="${LEFT}" y="42" font-size="11" fill="#555">${esc(opts.subtitle)}</text>`);
  }
  layout.models.forEach((m, i) => {
    const x = LEFT + (i % layout.legendCols) * LEGEND_COL_W;
    const y = 56 + Math.floor(i / layout.legendCols) * LEGEND_ROW_H;
    out.push(
      `<g class="legend"><rect x="${x}" y="${y}" width="14" height="14" fill="${PALETTE[i % PALETTE.length]}"/>` +
        `<text x="${x + 20}" y="${y + 11}">${esc(m)}</text></g>`,
    );
  });
  return out;
}

/** A panel's value axis: its ticks, whether it is logarithmic, and value → y. */
interface Axis {
  ticks: number[];
  log: boolean;
  y: (v: number) => number;
}

function axisOf(panel: Panel, rows: readonly BenchRow[], yBase: number): Axis {
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
  const y = (v: number): number => {
    const f = log
      ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))
      : (v - lo) / (hi - lo);
    return yBase - Math.max(0, Math.min(1, f)) * PANEL_H;
  };
  return { ticks: tickList, log, y };
}

/** One panel: title, axis with grid lines, then every group's bars. */
function panelSvg(layout: Layout, panel: Panel, pi: number): string[] {
  const { plotW } = layout;
  const y0 = layout.top + pi * (PANEL_H + PANEL_GAP);
  const yBase = y0 + PANEL_H;
  const axis = axisOf(panel, layout.rows, yBase);
  const out = [
    `<g class="panel" data-panel="${pi === 0 ? "latency" : "memory"}">`,
    `<text x="${LEFT}" y="${y0 - 12}" font-size="14" font-weight="bold">${esc(panel.title)}</text>`,
    `<text transform="translate(16 ${y0 + PANEL_H / 2}) rotate(-90)" text-anchor="middle" fill="#333">` +
      `${esc(panel.unit)}${axis.log ? " (log scale)" : ""}</text>`,
  ];
  for (const t of axis.ticks) {
    const y = axis.y(t);
    out.push(
      `<line x1="${LEFT}" x2="${LEFT + plotW}" y1="${y}" y2="${y}" stroke="#e3e3e3"/>`,
      `<text x="${LEFT - 6}" y="${y + 4}" text-anchor="end" fill="#333">${Number(t.toPrecision(6))}</text>`,
    );
  }
  out.push(`<line x1="${LEFT}" x2="${LEFT + plotW}" y1="${yBase}" y2="${yBase}" stroke="#333"/>`);
  out.push(`<line x1="${LEFT}" x2="${LEFT}" y1="${y0}" y2="${yBase}" stroke="#333"/>`);
  for (const g of layout.groups) out.push(...groupSvg(layout, panel, axis, g, yBase));
  out.push("</g>");
  return out;
}

/** A group's label under the axis and one bar per member model. */
function groupSvg(layout: Layout, panel: Panel, axis: Axis, g: Group, yBase: number): string[] {
  const slotX = LEFT + GROUP_GAP + layout.slack / 2 + g.x;
  const gx = slotX + (g.slotW - barsWidth(g.members.length)) / 2;
  const out = [
    `<text class="group-label" x="${slotX + g.slotW / 2}" y="${yBase + 18}" text-anchor="middle" fill="#222">${esc(g.label)}</text>`,
  ];
  g.members.forEach((m, slot) => {
    const r = rowAt(layout.rows, g.key, m);
    if (r === undefined) return;
    const x = gx + slot * (BAR_W + BAR_GAP);
    const colour = PALETTE[layout.models.indexOf(m) % PALETTE.length]!;
    out.push(...barSvg({ panel, axis, row: r, label: g.label, x, yBase, colour }));
  });
  return out;
}

/** One model's bar with its whisker and value, or a red note where the row has no value. */
function barSvg(bar: {
  panel: Panel;
  axis: Axis;
  row: BenchRow;
  label: string;
  x: number;
  yBase: number;
  colour: string;
}): string[] {
  const { panel, axis, row: r, x, yBase } = bar;
  const v = r.status === "ok" ? panel.value(r) : undefined;
  if (r.status !== "ok" || v === undefined || !(v > 0)) {
    const why = r.status === "ok" ? "n/a" : "error";
    return [
      `<text x="${x + BAR_W / 2}" y="${yBase - 6}" text-anchor="middle" font-size="10" fill="#b00" ` +
        `transform="rotate(-90 ${x + BAR_W / 2} ${yBase - 6})" dy="4">${why}</text>`,
    ];
  }
  const m = r.model;
  const y = axis.y(v);
  const out = [
    `<rect class="bar" data-model="${esc(m)}" x="${x}" y="${y.toFixed(1)}" width="${BAR_W}" ` +
      `height="${(yBase - y).toFixed(1)}" fill="${bar.colour}" stroke="#333" stroke-width="0.5"><title>${esc(m)} ${esc(bar.label)}: ` +
      `${fmt(v)} ${panel.unit}</title></rect>`,
  ];
  const w = panel.whisker?.(r);
  let labelY = y;
  if (w !== undefined && w > v) {
    const wy = axis.y(w);
    const cx = x + BAR_W / 2;
    out.push(
      `<line x1="${cx}" x2="${cx}" y1="${y.toFixed(1)}" y2="${wy.toFixed(1)}" stroke="#222"/>`,
      `<line x1="${cx - 5}" x2="${cx + 5}" y1="${wy.toFixed(1)}" y2="${wy.toFixed(1)}" stroke="#222"/>`,
    );
    labelY = wy;
  }
  out.push(
    `<text x="${x + BAR_W / 2}" y="${(labelY - 4).toFixed(1)}" text-anchor="middle" font-size="9" ` +
      `fill="#222">${fmt(v)}</text>`,
  );
  return out;
}

/**
 * Renders the chart. Latency uses a logarithmic axis when the bars span more
 * than a factor of 30 (a BERT-base next to a BERT-Mini would otherwise flatten
 * the small bars to nothing); the axis title says so.
 */
export function renderChartSvg(rows: readonly BenchRow[], opts: ChartOptions = {}): string {
  const layout = layoutOf(rows, opts);
  const out = headerSvg(layout, opts);
  PANELS.forEach((panel, pi) => {
    out.push(...panelSvg(layout, panel, pi));
  });
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}
