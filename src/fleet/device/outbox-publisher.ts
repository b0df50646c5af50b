/**
 * Store-and-forward: QoS 1 messages are written to the SQLite outbox first
 * and deleted only when the broker's PUBACK arrives. While connected the
 * publisher keeps a window of messages in flight, oldest first; on reconnect
 * it starts again from the oldest unacknowledged row. A crash (even `kill -9`)
 * between publish and PUBACK resends the message, so delivery is at least
 * once: every payload carries an id for subscribers to dedupe on.
 */
import { QuantdError } from "../../errors.ts";
import type { EnqueueResult, OutboxStore } from "../../store/outbox.ts";
import type { MqttConnection } from "../mqtt-client.ts";

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
  /**
   * PUBACKs saying nobody was subscribed (reason 0x10): the row stayed and was
   * sent again later, since a controller may be about to subscribe again.
   */
  noSubscribers: number;
  /** Rows dropped after {@link OutboxPublisherOptions.noSubscriberTtlMs} of nobody subscribing. */
  unheard: number;
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
  /**
   * How long a message nobody is subscribed to is kept and retried (with
   * backoff from `retryDelayMs` up to 30 s) before it is dropped and counted
   * as unheard. After a mosquitto restart with persistence a controller's
   * shared subscription is gone until it subscribes again; a device that
   * reconnects first must not lose its reports in that gap. @defaultValue 1 hour
   */
  noSubscriberTtlMs?: number;
  /** The publisher's log lines (dropped when absent). */
  log?: (line: string) => void;
  /** User properties signing each message (the device key; deterministic, so a resend carries the same). */
  sign?: (topic: string, payload: Uint8Array) => Record<string, string>;
  /** @defaultValue Date.now */
  now?: () => number;
}

/** Longest wait between retries of a message nobody was subscribed to. */
const MAX_HOLD_MS = 30_000;

/** Builds a publisher; it starts draining on every connect of `conn`. */
export function createOutboxPublisher(
  conn: MqttConnection,
  outbox: OutboxStore,
  options: OutboxPublisherOptions = {},
): OutboxPublisher {
  const window = Math.max(1, options.window ?? DEFAULT_PUBLISH_WINDOW);
  const retryDelayMs = options.retryDelayMs ?? 500;
  const log = options.log ?? (() => {});
  const now = options.now ?? Date.now;
  const noSubscriberTtlMs = options.noSubscriberTtlMs ?? 3_600_000;
  // id → when nobody was first subscribed, the wait before the next try and when that is due.
  const held = new Map<number, { since: number; delayMs: number; until: number }>();
  let noSubscriberAcks = 0;
  let unheard = 0;
  let holdTimer: ReturnType<typeof setTimeout> | undefined;
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

  const scheduleHeld = (): void => {
    if (stopped || holdTimer !== undefined || held.size === 0) return;
    const due = Math.min(...[...held.values()].map((h) => h.until));
    holdTimer = setTimeout(
      () => {
        holdTimer = undefined;
        drain();
      },
      Math.max(10, due - now()),
    );
    holdTimer.unref?.();
  };

  // The broker took the message but nobody was subscribed: keep it for a later try, or give up.
  const hold = (id: number, topic: string): void => {
    noSubscriberAcks++;
    const t = now();
    const prev = held.get(id);
    if (prev !== undefined && t - prev.since >= noSubscriberTtlMs) {
      held.delete(id);
      if (outbox.ack(id)) unheard++;
      log(`outbox: dropped message ${id} on ${topic}: nobody subscribed for ${noSubscriberTtlMs} ms`);
      notifyIfEmpty();
      return;
    }
    const delayMs = prev === undefined ? retryDelayMs : Math.min(MAX_HOLD_MS, prev.delayMs * 2);
    held.set(id, { since: prev?.since ?? t, delayMs, until: t + delayMs });
    scheduleHeld();
  };

  const drain = (): void => {
    if (stopped || !conn.connected) return;
    const t = now();
    // Rows the outbox dropped while held (it was full) are forgotten here: ids only grow.
    if (held.size > 0) {
      const oldest = outbox.peek(1)[0]?.id;
      for (const id of held.keys()) if (oldest === undefined || id < oldest) held.delete(id);
    }
    while (inFlight.size < window) {
      const next = outbox
        .peek(inFlight.size + held.size + window)
        .filter((m) => !inFlight.has(m.id) && (held.get(m.id)?.until ?? 0) <= t);
      if (next.length === 0) break;
      for (const m of next) {
        if (inFlight.size >= window) break;
        const gen = generation;
        inFlight.set(m.id, gen);
        const props = options.sign?.(m.topic, m.payload);
        conn
          .publish(m.topic, m.payload, props === undefined ? { qos: 1 } : { qos: 1, userProperties: props })
          .then(
            ({ noSubscribers }) => {
              if (inFlight.get(m.id) === gen) inFlight.delete(m.id);
              if (noSubscribers) {
                hold(m.id, m.topic);
                return;
              }
              held.delete(m.id);
              // A PUBACK is proof of delivery whichever connection carried it.
              if (outbox.ack(m.id)) acked++;
              notifyIfEmpty();
              drain();
            },
            (err: unknown) => {
              if (inFlight.get(m.id) !== gen) return;
              inFlight.delete(m.id);
              const e = QuantdError.from(err, "FLEET_UNAVAILABLE");
              if (/refused the message/.test(e.message)) {
                held.delete(m.id);
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
    // A new connection may find the subscribers back: try held messages at once (their age is kept).
    for (const h of held.values()) h.until = 0;
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
    stats: () => ({ acked, refused, inFlight: inFlight.size, noSubscribers: noSubscriberAcks, unheard }),
    stop() {
      stopped = true;
      if (retryTimer !== undefined) clearTimeout(retryTimer);
      if (holdTimer !== undefined) clearTimeout(holdTimer);
      for (const w of waiters) w();
      waiters.clear();
    },
  };
}
