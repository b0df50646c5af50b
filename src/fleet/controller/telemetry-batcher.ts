/**
 * Telemetry is the bulk of a fleet's traffic (a message per device per
 * interval): the controller writes it in groups, one transaction each, and
 * under overload drops the newest and counts it rather than queueing without
 * bound (telemetry is QoS 0; the next interval brings fresh figures).
 */
import type { TelemetryItem } from "./store.ts";

/** Telemetry messages written per transaction at most. */
export const TELEMETRY_GROUP = 500;
/** Longest wait before a partial group of telemetry is written, in ms. */
export const TELEMETRY_FLUSH_MS = 200;
/** Telemetry messages waiting for the store beyond which new ones are dropped and counted. */
export const MAX_TELEMETRY_BACKLOG = 50_000;

/** Groups telemetry messages for `write`, which must not reject. */
export class TelemetryBatcher {
  private pending: TelemetryItem[] = [];
  /** Messages queued or being written. */
  private inFlight = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly write: (items: TelemetryItem[]) => Promise<void>) {}

  /** Queues one message; false when it was dropped because the store is {@link MAX_TELEMETRY_BACKLOG} behind. */
  push(item: TelemetryItem): boolean {
    if (this.inFlight >= MAX_TELEMETRY_BACKLOG) return false;
    this.inFlight++;
    this.pending.push(item);
    if (this.pending.length >= TELEMETRY_GROUP) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), TELEMETRY_FLUSH_MS);
    return true;
  }

  /** Hands what is queued to `write` now. */
  flush(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const items = this.pending;
    this.pending = [];
    void this.write(items).finally(() => {
      this.inFlight -= items.length;
    });
  }
}
