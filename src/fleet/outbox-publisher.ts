/**
 * Store-and-forward: QoS 1 messages are written to the SQLite outbox first
 * and deleted only when the broker's PUBACK arrives. While connected the
 * publisher keeps a window of messages in flight, oldest first; on reconnect
 * it starts again from the oldest unacknowledged row. A crash (even `kill -9`)
 * between publish and PUBACK resends the message, so delivery is at least
 * once: every payload carries an id for subscribers to dedupe on.
 */
import { QuantdError } from "../errors.ts";
import type { EnqueueResult, OutboxStore } from "../store/outbox.ts";
import type { MqttConnection } from "./mqtt-client.ts";

/** Default number of unacknowledged messages on the wire. */
export const DEFAULT_PUBLISH_WINDOW = 32;

/** Counters of a publisher since it was created. */
export interface PublisherStats {
  /** PUBACKs received (each removed one outbox row). */
  acked: number;
  /** Publishes the broker refused with a reason code (ACL, quota): removed and counted, never retried. */
  refused: number;
  /** Messages currently on the wire. */
  inFlight: number;
}

/** Drains an {@link OutboxStore} over an {@link MqttConnection}. */
export interface OutboxPublisher {
  /**
   * Stores a QoS 1 message and starts sending it when connected.
   *
   * @throws REQUEST_INVALID on a bad topic (from the outbox)
   */
  enqueue(topic: string, payload: Uint8Array | string): EnqueueResult;
  /** Sends what the outbox holds (called on connect; harmless at any time). */
  drain(): void;
  /** Resolves true once the outbox is empty, false after `timeoutMs`. */
  flushed(timeoutMs: number): Promise<boolean>;
  stats(): PublisherStats;
  /** Stops sending; rows stay in the outbox for the next process. */
  stop(): void;
}

/** Options of {@link createOutboxPublisher}. */
export interface OutboxPublisherOptions {
  /** Messages in flight at once. @defaultValue {@link DEFAULT_PUBLISH_WINDOW} */
  window?: number;
  /** Wait before retrying after a failed publish on a live connection, in ms. @defaultValue 500 */
  retryDelayMs?: number;
  /** The publisher's log lines (dropped when absent). */
  log?: (line: string) => void;
}

/** Builds a publisher; it starts draining on every connect of `conn`. */
export function createOutboxPublisher(
  conn: MqttConnection,
  outbox: OutboxStore,
  options: OutboxPublisherOptions = {},
): OutboxPublisher {
  const window = Math.max(1, options.window ?? DEFAULT_PUBLISH_WINDOW);
  const retryDelayMs = options.retryDelayMs ?? 500;
  const log = options.log ?? (() => {});
  // id → connection generation it was sent on: a late PUBACK or failure from an
  // older connection must not disturb the bookkeeping of a resend.
  const inFlight = new Map<number, number>();
  let generation = 0;
  let stopped = false;
  let acked = 0;
  let refused = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  const waiters = new Set<() => void>();

  const notifyIfEmpty = (): void => {
    if (waiters.size === 0 || outbox.stats().count > 0) return;
    for (const w of waiters) w();
    waiters.clear();
  };

  const drain = (): void => {
    if (stopped || !conn.connected) return;
    while (inFlight.size < window) {
      const next = outbox.peek(inFlight.size + window).filter((m) => !inFlight.has(m.id));
      if (next.length === 0) break;
      for (const m of next) {
        if (inFlight.size >= window) break;
        const gen = generation;
        inFlight.set(m.id, gen);
        conn.publish(m.topic, m.payload, { qos: 1 }).then(
          () => {
            // A PUBACK is proof of delivery whichever connection carried it.
            if (outbox.ack(m.id)) acked++;
            if (inFlight.get(m.id) === gen) inFlight.delete(m.id);
            notifyIfEmpty();
            drain();
          },
          (err: unknown) => {
            if (inFlight.get(m.id) !== gen) return;
            inFlight.delete(m.id);
            const e = QuantdError.from(err, "FLEET_UNAVAILABLE");
            if (/refused the message/.test(e.message)) {
              // Retrying a message the broker refuses would block the queue forever.
              if (outbox.ack(m.id)) refused++;
              log(`outbox: dropped message ${m.id} on ${m.topic}: ${e.message}`);
              drain();
              return;
            }
            if (conn.connected && !stopped && retryTimer === undefined) {
              retryTimer = setTimeout(() => {
                retryTimer = undefined;
                drain();
              }, retryDelayMs);
            }
          },
        );
      }
    }
  };

  conn.onConnect(() => {
    generation++;
    inFlight.clear();
    drain();
  });
  conn.onClose(() => {
    generation++;
    inFlight.clear();
  });

  return {
    enqueue(topic, payload) {
      const r = outbox.enqueue(topic, payload, { qos: 1 });
      if (r.dropped > 0) log(`outbox full: dropped ${r.dropped} oldest message(s)`);
      drain();
      return r;
    },
    drain,
    flushed(timeoutMs) {
      if (outbox.stats().count === 0) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          resolve(true);
        };
        const timer = setTimeout(() => {
          waiters.delete(done);
          resolve(false);
        }, timeoutMs);
        waiters.add(done);
      });
    },
    stats: () => ({ acked, refused, inFlight: inFlight.size }),
    stop() {
      stopped = true;
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      for (const w of waiters) w();
      waiters.clear();
    },
  };
}
