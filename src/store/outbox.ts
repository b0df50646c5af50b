/**
 * Messages waiting for the MQTT link, in order. The link peeks, publishes,
 * then acks; a message is only deleted by its ack, so a crash between publish
 * and ack resends it (at-least-once, as MQTT QoS 1 expects).
 *
 * The outbox is bounded in bytes (topic + payload): when a new message does
 * not fit, the oldest messages are dropped and counted, so a board offline for
 * weeks keeps its latest reports and never fills its disk.
 */
import { QuantdError } from "../errors.ts";
import { createCounters } from "./counters.ts";
import { blob, num, str } from "./row.ts";
import type { SqlDatabase, SqlRow } from "./sql.ts";

/** Default bound on the outbox, topic plus payload bytes (4 MiB). */
export const DEFAULT_OUTBOX_MAX_BYTES = 4 * 1024 * 1024;

/** MQTT delivery guarantee. */
export type Qos = 0 | 1 | 2;

/** A queued message. */
export interface OutboxMessage {
  /** Increasing; never reused. */
  id: number;
  topic: string;
  payload: Uint8Array;
  qos: Qos;
  createdAt: number;
}

/** What {@link OutboxStore.enqueue} did. */
export interface EnqueueResult {
  /** The new message's id, or `null` when it alone exceeds the bound and was dropped. */
  id: number | null;
  /** Messages dropped to make room (including this one when `id` is null). */
  dropped: number;
}

/** The outbox's size and losses. */
export interface OutboxStats {
  count: number;
  bytes: number;
  maxBytes: number;
  /** Messages dropped since the database was created. */
  dropped: number;
  droppedBytes: number;
}

/** The outbox table. Every method is synchronous and atomic. */
export interface OutboxStore {
  /**
   * Appends a message (a string payload is stored as UTF-8).
   *
   * @throws REQUEST_INVALID when the topic is empty or holds MQTT wildcards, or qos is not 0, 1 or 2
   */
  enqueue(topic: string, payload: Uint8Array | string, options?: { qos?: Qos }): EnqueueResult;
  /** The oldest `limit` messages, oldest first, without removing them. */
  peek(limit: number): OutboxMessage[];
  /** Removes a delivered message; false when it was already gone (acked or dropped). */
  ack(id: number): boolean;
  /** Sizes and drop counters. */
  stats(): OutboxStats;
}

function toMessage(r: SqlRow): OutboxMessage {
  return {
    id: num(r, "id"),
    topic: str(r, "topic"),
    payload: blob(r, "payload"),
    qos: num(r, "qos") as Qos,
    createdAt: num(r, "created_at"),
  };
}

/**
 * The {@link OutboxStore} over a migrated database.
 *
 * @throws CONFIG_INVALID when `maxBytes` is not a positive integer
 */
export function createOutboxStore(
  db: SqlDatabase,
  options: { maxBytes?: number; now?: () => number } = {},
): OutboxStore {
  const maxBytes = options.maxBytes ?? DEFAULT_OUTBOX_MAX_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw new QuantdError("CONFIG_INVALID", `outbox maxBytes must be a positive integer, got ${maxBytes}`);
  }
  const now = options.now ?? Date.now;
  const counters = createCounters(db);
  const insert = db.prepare(
    "INSERT INTO outbox (topic, payload, qos, bytes, created_at) VALUES (?, ?, ?, ?, ?)",
  );
  const oldest = db.prepare("SELECT id, bytes FROM outbox ORDER BY id LIMIT 1");
  const remove = db.prepare("DELETE FROM outbox WHERE id = ?");
  const peek = db.prepare("SELECT id, topic, payload, qos, created_at FROM outbox ORDER BY id LIMIT ?");
  const countRows = db.prepare("SELECT count(*) AS n FROM outbox");

  return {
    enqueue(topic: string, payload: Uint8Array | string, opts: { qos?: Qos } = {}): EnqueueResult {
      const qos = opts.qos ?? 1;
      if (typeof topic !== "string" || topic === "" || /[+#\0]/.test(topic)) {
        throw new QuantdError(
          "REQUEST_INVALID",
          `outbox topic must be a non-empty MQTT topic without wildcards`,
          {
            details: { topic: String(topic) },
          },
        );
      }
      if (qos !== 0 && qos !== 1 && qos !== 2) {
        throw new QuantdError("REQUEST_INVALID", `qos must be 0, 1 or 2, got ${String(qos)}`);
      }
      const body = typeof payload === "string" ? new Uint8Array(Buffer.from(payload, "utf8")) : payload;
      const bytes = Buffer.byteLength(topic, "utf8") + body.byteLength;
      return db.transaction(() => {
        if (bytes > maxBytes) {
          counters.add("outbox.dropped", 1);
          counters.add("outbox.dropped_bytes", bytes);
          return { id: null, dropped: 1 };
        }
        let dropped = 0;
        let droppedBytes = 0;
        while (counters.get("outbox.bytes") + bytes > maxBytes) {
          const o = oldest.get();
          if (o === undefined) break;
          remove.run(num(o, "id"));
          dropped++;
          droppedBytes += num(o, "bytes");
        }
        if (dropped > 0) {
          counters.add("outbox.dropped", dropped);
          counters.add("outbox.dropped_bytes", droppedBytes);
        }
        const id = insert.run(topic, body, qos, bytes, now()).lastInsertRowid;
        return { id, dropped };
      });
    },
    peek(limit: number): OutboxMessage[] {
      const n = Math.max(0, Math.min(Math.floor(limit), 10_000));
      return n === 0 ? [] : peek.all(n).map(toMessage);
    },
    ack(id: number): boolean {
      return remove.run(id).changes > 0;
    },
    stats(): OutboxStats {
      return {
        count: num(countRows.get() ?? { n: 0 }, "n"),
        bytes: counters.get("outbox.bytes"),
        maxBytes,
        dropped: counters.get("outbox.dropped"),
        droppedBytes: counters.get("outbox.dropped_bytes"),
      };
    },
  };
}
