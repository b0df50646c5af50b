/**
 * Store-and-forward: QoS 1 messages are written to the SQLite outbox first
 * and deleted only when the broker's PUBACK arrives. While connected the
 * publisher keeps a window of messages in flight, oldest first; on reconnect
 * it starts again from the oldest unacknowledged row. A crash (even `kill -9`)
 * between publish and PUBACK resends the message, so delivery is at least
 * once: every payload carries an id for subscribers to dedupe on.
 */
import { QuantdError } from "../../errors.ts";
import type { EnqueueResult, OutboxMessage, OutboxStore } from "../../store/outbox.ts";
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

/** When a message nobody was subscribed to was first held, the wait before its next try and when that is due. */
interface Held {
  since: number;
  delayMs: number;
  until: number;
}

/** The {@link OutboxPublisher}: a window of messages in flight, held ones retried with back-off. */
class WindowedPublisher implements OutboxPublisher {
  readonly #conn: MqttConnection;
  readonly #outbox: OutboxStore;
  readonly #sign: OutboxPublisherOptions["sign"];
  readonly #window: number;
  readonly #retryDelayMs: number;
  readonly #noSubscriberTtlMs: number;
  readonly #log: (line: string) => void;
  readonly #now: () => number;
  readonly #held = new Map<number, Held>();
  // id → connection generation it was sent on: a late PUBACK or failure from an
  // older connection must not disturb the bookkeeping of a resend.
  readonly #inFlight = new Map<number, number>();
  readonly #waiters = new Set<() => void>();
  #generation = 0;
  #stopped = false;
  #acked = 0;
  #refused = 0;
  #noSubscriberAcks = 0;
  #unheard = 0;
  #holdTimer: ReturnType<typeof setTimeout> | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: MqttConnection, outbox: OutboxStore, options: OutboxPublisherOptions) {
    this.#conn = conn;
    this.#outbox = outbox;
    this.#sign = options.sign;
    this.#window = Math.max(1, options.window ?? DEFAULT_PUBLISH_WINDOW);
    this.#retryDelayMs = options.retryDelayMs ?? 500;
    this.#noSubscriberTtlMs = options.noSubscriberTtlMs ?? 3_600_000;
    this.#log = options.log ?? (() => {});
    this.#now = options.now ?? Date.now;
    conn.onConnect(() => {
      this.#generation++;
      this.#inFlight.clear();
      // A new connection may find the subscribers back: try held messages at once (their age is kept).
      for (const h of this.#held.values()) h.until = 0;
      this.drain();
    });
    conn.onClose(() => {
      this.#generation++;
      this.#inFlight.clear();
    });
  }

  #notifyIfEmpty(): void {
    if (this.#waiters.size === 0 || this.#outbox.stats().count > 0) return;
    for (const w of this.#waiters) w();
    this.#waiters.clear();
  }

  #scheduleHeld(): void {
    if (this.#stopped || this.#holdTimer !== undefined || this.#held.size === 0) return;
    const due = Math.min(...[...this.#held.values()].map((h) => h.until));
    this.#holdTimer = setTimeout(
      () => {
        this.#holdTimer = undefined;
        this.drain();
      },
      Math.max(10, due - this.#now()),
    );
    this.#holdTimer.unref?.();
  }

  /** The broker took the message but nobody was subscribed: keep it for a later try, or give up. */
  #hold(id: number, topic: string): void {
    this.#noSubscriberAcks++;
    const t = this.#now();
    const prev = this.#held.get(id);
    if (prev !== undefined && t - prev.since >= this.#noSubscriberTtlMs) {
      this.#held.delete(id);
      if (this.#outbox.ack(id)) this.#unheard++;
      this.#log(
        `outbox: dropped message ${id} on ${topic}: nobody subscribed for ${this.#noSubscriberTtlMs} ms`,
      );
      this.#notifyIfEmpty();
      return;
    }
    const delayMs = prev === undefined ? this.#retryDelayMs : Math.min(MAX_HOLD_MS, prev.delayMs * 2);
    this.#held.set(id, { since: prev?.since ?? t, delayMs, until: t + delayMs });
    this.#scheduleHeld();
  }

  /** A PUBACK: the row goes (proof of delivery whichever connection carried it), or is held when nobody listened. */
  #acknowledged(m: OutboxMessage, gen: number, noSubscribers: boolean): void {
    if (this.#inFlight.get(m.id) === gen) this.#inFlight.delete(m.id);
    if (noSubscribers) {
      this.#hold(m.id, m.topic);
      return;
    }
    this.#held.delete(m.id);
    if (this.#outbox.ack(m.id)) this.#acked++;
    this.#notifyIfEmpty();
    this.drain();
  }

  /** A failed publish: a refused message is dropped (retrying it would block the queue forever), others retried. */
  #failed(m: OutboxMessage, gen: number, err: unknown): void {
    if (this.#inFlight.get(m.id) !== gen) return;
    this.#inFlight.delete(m.id);
    const e = QuantdError.from(err, "FLEET_UNAVAILABLE");
    if (/refused the message/.test(e.message)) {
      this.#held.delete(m.id);
      if (this.#outbox.ack(m.id)) this.#refused++;
      this.#log(`outbox: dropped message ${m.id} on ${m.topic}: ${e.message}`);
      this.drain();
      return;
    }
    if (this.#conn.connected && !this.#stopped && this.#retryTimer === undefined) {
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = undefined;
        this.drain();
      }, this.#retryDelayMs);
    }
  }

  #send(m: OutboxMessage): void {
    const gen = this.#generation;
    this.#inFlight.set(m.id, gen);
    const props = this.#sign?.(m.topic, m.payload);
    this.#conn
      .publish(m.topic, m.payload, props === undefined ? { qos: 1 } : { qos: 1, userProperties: props })
      .then(
        ({ noSubscribers }) => this.#acknowledged(m, gen, noSubscribers),
        (err: unknown) => this.#failed(m, gen, err),
      );
  }

  drain(): void {
    if (this.#stopped || !this.#conn.connected) return;
    const t = this.#now();
    const held = this.#held;
    // Rows the outbox dropped while held (it was full) are forgotten here: ids only grow.
    if (held.size > 0) {
      const oldest = this.#outbox.peek(1)[0]?.id;
      for (const id of held.keys()) if (oldest === undefined || id < oldest) held.delete(id);
    }
    while (this.#inFlight.size < this.#window) {
      const next = this.#outbox
        .peek(this.#inFlight.size + held.size + this.#window)
        .filter((m) => !this.#inFlight.has(m.id) && (held.get(m.id)?.until ?? 0) <= t);
      if (next.length === 0) break;
      for (const m of next) {
        if (this.#inFlight.size >= this.#window) break;
        this.#send(m);
      }
    }
  }

  enqueue(topic: string, payload: Uint8Array | string): EnqueueResult {
    const r = this.#outbox.enqueue(topic, payload, { qos: 1 });
    if (r.dropped > 0) this.#log(`outbox full: dropped ${r.dropped} oldest message(s)`);
    this.drain();
    return r;
  }

  flushed(timeoutMs: number): Promise<boolean> {
    if (this.#outbox.stats().count === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(done);
        resolve(false);
      }, timeoutMs);
      this.#waiters.add(done);
    });
  }

  stats(): PublisherStats {
    return {
      acked: this.#acked,
      refused: this.#refused,
      inFlight: this.#inFlight.size,
      noSubscribers: this.#noSubscriberAcks,
      unheard: this.#unheard,
    };
  }

  stop(): void {
    this.#stopped = true;
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    if (this.#holdTimer !== undefined) clearTimeout(this.#holdTimer);
    for (const w of this.#waiters) w();
    this.#waiters.clear();
  }
}

/** Builds a publisher; it starts draining on every connect of `conn`. */
export function createOutboxPublisher(
  conn: MqttConnection,
  outbox: OutboxStore,
  options: OutboxPublisherOptions = {},
): OutboxPublisher {
  return new WindowedPublisher(conn, outbox, options);
}
