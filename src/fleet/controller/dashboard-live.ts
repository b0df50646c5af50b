/**
 * The dashboard's live updates over Server-Sent Events: the controller's
 * events mark devices changed, and at most every {@link PUSH_INTERVAL_MS} the
 * changed devices are pushed to every open stream, which then re-reads them:
 * a fleet of 1,000 boards must not flood the browser.
 */
import type { FleetController } from "./controller.ts";

/** How often live updates are pushed at most. */
export const PUSH_INTERVAL_MS = 500;

/** The open event streams of one dashboard and what changed since the last push. */
export class LiveUpdates {
  private readonly streams = new Set<ReadableStreamDefaultController<Uint8Array>>();
  private readonly encoder = new TextEncoder();
  private changed = new Set<string>();
  private readonly offEvents: () => void;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(controller: FleetController) {
    this.offEvents = controller.onEvent((e) => this.changed.add(`${e.fleet}/${e.device}`));
    this.timer = setInterval(() => this.push(), PUSH_INTERVAL_MS);
  }

  /** A new `text/event-stream` response, open until the client goes or {@link stop}. */
  events(): Response {
    let self: ReadableStreamDefaultController<Uint8Array> | undefined;
    const streams = this.streams;
    const hello = this.encoder.encode(": connected\n\n");
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        self = c;
        streams.add(c);
        c.enqueue(hello);
      },
      cancel() {
        if (self !== undefined) streams.delete(self);
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" },
    });
  }

  /** Stops pushing and closes every stream. */
  stop(): void {
    clearInterval(this.timer);
    this.offEvents();
    for (const s of this.streams) {
      try {
        s.close();
      } catch {
        // already closed by the client
      }
    }
    this.streams.clear();
  }

  private push(): void {
    if (this.changed.size === 0 || this.streams.size === 0) {
      if (this.streams.size === 0) this.changed.clear();
      return;
    }
    const devices = [...this.changed];
    this.changed = new Set();
    const chunk = this.encoder.encode(`event: changed\ndata: ${JSON.stringify({ devices })}\n\n`);
    for (const s of this.streams) {
      try {
        s.enqueue(chunk);
      } catch {
        this.streams.delete(s);
      }
    }
  }
}
