/**
 * Prometheus metrics in the text exposition format (version 0.0.4), written by
 * hand: three metric types are all the agent needs, and a client library would
 * cost more memory on a 1 GB board than these few maps.
 */

import { type ProcessFigures, readProcessFigures } from "../core/process-figures.ts";

type Labels = Record<string, string>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function labelText(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return "";
  return `{${keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(",")}}`;
}

function formatNumber(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Number.POSITIVE_INFINITY) return "+Inf";
  if (n === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(n);
}

/** A metric that can render itself. */
interface Metric {
  render(out: string[]): void;
}

/** A monotonically increasing count, per label set. */
export class Counter implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  /** @param initial - label sets shown at 0 before their first event, so a scraper sees the series from the start */
  constructor(
    readonly name: string,
    readonly help: string,
    initial: readonly Labels[] = [],
  ) {
    for (const labels of initial) this.#values.set(labelText(labels), { labels, value: 0 });
  }

  /** Adds `by` (default 1) to the series of `labels`. */
  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const entry = this.#values.get(key);
    if (entry === undefined) this.#values.set(key, { labels, value: by });
    else entry.value += by;
  }

  /** Current value of one series (0 when never incremented). */
  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels))?.value ?? 0;
  }

  /** Sum over every series. */
  total(): number {
    let sum = 0;
    for (const { value } of this.#values.values()) sum += value;
    return sum;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`);
    for (const { labels, value } of this.#values.values()) {
      out.push(`${this.name}${labelText(labels)} ${formatNumber(value)}`);
    }
  }
}

/** A value read when scraped (queue depth, RSS) or set explicitly. */
export class Gauge implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly collect?: () => readonly { labels: Labels; value: number }[],
  ) {}

  /** Sets the series of `labels`. */
  set(value: number, labels: Labels = {}): void {
    this.#values.set(labelText(labels), { labels, value });
  }

  /** Drops every series set so far (e.g. the old model's info labels). */
  reset(): void {
    this.#values.clear();
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`);
    const series = this.collect !== undefined ? this.collect() : [...this.#values.values()];
    for (const { labels, value } of series)
      out.push(`${this.name}${labelText(labels)} ${formatNumber(value)}`);
  }
}

/** Cumulative buckets, sum and count, per label set. */
export class Histogram implements Metric {
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  readonly buckets: readonly number[];
  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
  ) {
    this.buckets = [...buckets].sort((a, b) => a - b);
  }

  /** Records one observation. */
  observe(value: number, labels: Labels = {}): void {
    const key = labelText(labels);
    let s = this.#series.get(key);
    if (s === undefined) {
      s = { labels, counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.#series.set(key, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  /** Observations of one series, and how many fell in each bucket's cumulative range. */
  snapshot(labels: Labels = {}): { count: number; sum: number; buckets: { le: number; count: number }[] } {
    const s = this.#series.get(labelText(labels));
    return {
      count: s?.count ?? 0,
      sum: s?.sum ?? 0,
      buckets: this.buckets.map((le, i) => ({ le, count: s?.counts[i] ?? 0 })),
    };
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`);
    for (const s of this.#series.values()) {
      for (let i = 0; i < this.buckets.length; i++) {
        const labels = labelText({ ...s.labels, le: formatNumber(this.buckets[i]!) });
        out.push(`${this.name}_bucket${labels} ${s.counts[i]}`);
      }
      out.push(`${this.name}_bucket${labelText({ ...s.labels, le: "+Inf" })} ${s.count}`);
      out.push(`${this.name}_sum${labelText(s.labels)} ${formatNumber(s.sum)}`);
      out.push(`${this.name}_count${labelText(s.labels)} ${s.count}`);
    }
  }
}

/** A set of metrics rendered together for `/metrics`. */
export class MetricsRegistry {
  readonly #metrics: Metric[] = [];

  /** Registers and returns a metric. */
  add<T extends Metric>(metric: T): T {
    this.#metrics.push(metric);
    return metric;
  }

  /** The exposition text (ends with a newline, as Prometheus expects). */
  render(): string {
    const out: string[] = [];
    for (const m of this.#metrics) m.render(out);
    return `${out.join("\n")}\n`;
  }
}

/** What `quantd_build_info` labels. */
export interface BuildInfo {
  version: string;
  bun: string;
  onnxruntime?: string;
}

/**
 * Registers the standard `process_*` metrics (as Prometheus client libraries
 * name them, so existing dashboards and alerts apply) and `quantd_build_info`.
 */
export function addProcessMetrics(registry: MetricsRegistry, build: BuildInfo): void {
  const one = (value: number | undefined) => (value === undefined ? [] : [{ labels: {}, value }]);
  const gauge = (name: string, help: string, read: (f: ProcessFigures) => number | undefined): void => {
    registry.add(new Gauge(name, help, () => one(read(readProcessFigures()))));
  };
  registry.add(
    new ReadCounter(
      "process_cpu_seconds_total",
      "Total user and system CPU time spent in seconds",
      () => readProcessFigures().cpuSeconds,
    ),
  );
  gauge("process_resident_memory_bytes", "Resident memory size in bytes", (f) => f.residentBytes);
  gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", (f) => f.virtualBytes);
  gauge(
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds",
    (f) => f.startTimeSeconds,
  );
  gauge("process_open_fds", "Number of open file descriptors", (f) => f.openFds);
  gauge("process_max_fds", "Maximum number of open file descriptors", (f) => f.maxFds);
  const labels: Labels = { version: build.version, bun: build.bun };
  if (build.onnxruntime !== undefined) labels["onnxruntime"] = build.onnxruntime;
  registry.add(
    new Gauge("quantd_build_info", "Versions of quantd and what it runs on (value 1)", () => [
      { labels, value: 1 },
    ]),
  );
}

/** A counter whose value is read when scraped (CPU seconds). */
class ReadCounter implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: () => number,
  ) {}

  render(out: string[]): void {
    out.push(
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} counter`,
      `${this.name} ${formatNumber(this.read())}`,
    );
  }
}

/** The content type of {@link MetricsRegistry.render}'s output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
