/**
 * The metrics the inference server records (requests, errors, latency, batch
 * sizes and times, queue depth, the active model, swaps and rollbacks), on the
 * Prometheus primitives of `metrics.ts`. The routes write them, `/metrics`
 * renders them, and the fleet link reads the recent batch times for telemetry.
 */
import { Counter, Gauge, Histogram, MetricsRegistry } from "./metrics.ts";
import { RecentValues } from "./recent-values.ts";

/** The metrics the server records. */
export class ServerMetrics {
  readonly registry = new MetricsRegistry();
  readonly requests: Counter;
  readonly errors: Counter;
  readonly latency: Histogram;
  readonly batchSize: Histogram;
  readonly batchDuration: Histogram;
  /** Batch times (ms) since fleet telemetry last looked: its p50/p95/p99 are computed from these. */
  readonly recentBatchMs = new RecentValues();
  readonly swaps: Counter;
  readonly rollbacks: Counter;
  readonly storeWritesDropped: Counter;

  constructor(opts: {
    queueDepth: () => number;
    active: () => { version: number; kind: string } | undefined;
  }) {
    const r = this.registry;
    this.requests = r.add(new Counter("quantd_requests_total", "HTTP requests by route and status"));
    this.errors = r.add(new Counter("quantd_errors_total", "Failed requests by error code"));
    this.latency = r.add(
      new Histogram(
        "quantd_request_duration_seconds",
        "Request latency by route",
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      ),
    );
    this.batchSize = r.add(
      new Histogram("quantd_batch_size", "Texts per inference batch", [1, 2, 4, 8, 16, 32, 64, 128, 256]),
    );
    this.batchDuration = r.add(
      new Histogram(
        "quantd_batch_duration_seconds",
        "Inference time per batch",
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      ),
    );
    r.add(
      new Gauge("quantd_queue_depth", "Texts waiting for a batch", () => [
        { labels: {}, value: opts.queueDepth() },
      ]),
    );
    r.add(
      new Gauge("quantd_active_model_info", "The serving model version and kind (value 1)", () => {
        const m = opts.active();
        return m === undefined ? [] : [{ labels: { version: String(m.version), kind: m.kind }, value: 1 }];
      }),
    );
    r.add(
      new Gauge("quantd_active_model_version", "Registry id of the serving model", () => {
        const m = opts.active();
        return m === undefined ? [] : [{ labels: {}, value: m.version }];
      }),
    );
    this.swaps = r.add(new Counter("quantd_model_swaps_total", "Model promotions served", [{}]));
    this.rollbacks = r.add(
      new Counter("quantd_model_rollbacks_total", "Rollbacks, by trigger", [
        { trigger: "command" },
        { trigger: "auto" },
      ]),
    );
    this.storeWritesDropped = r.add(
      new Counter(
        "quantd_store_writes_dropped_total",
        "Rows the serving process gave up writing (store locked too long, or full), by kind",
        [{ kind: "capture" }],
      ),
    );
    r.add(
      new Gauge("quantd_process_resident_memory_bytes", "Resident set size of the agent", () => [
        { labels: {}, value: process.memoryUsage.rss() },
      ]),
    );
  }
}
