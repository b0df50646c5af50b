/**
 * The sample pool: the inputs the device has seen, kept for calibration and
 * validation. It is bounded (rows and text bytes) and kept representative by
 * reservoir sampling stratified by length:
 *
 * - every distinct sample offered counts as "seen" in its length bucket (the
 *   counters live in `sample_buckets`, so they survive restarts);
 * - while the pool has room, every sample is kept;
 * - once full, a new sample is kept with probability K/N (K rows held, N seen
 *   in all), which is what a reservoir of K over the stream does; to make room,
 *   a random row is evicted from the bucket most above its share K·seen_b/N.
 *   So each bucket holds close to its share of what the device saw, and within
 *   a bucket the rows are a uniform sample of that bucket's stream.
 *
 * Duplicates (same SHA-256 of the normalized text as a row in the pool) are
 * dropped and counted. A duplicate of a sample already evicted is not
 * recognized: remembering every hash would make the pool unbounded.
 */
import { createHash } from "node:crypto";
import { QuantdError } from "../errors.ts";
import { createCounters } from "./counters.ts";
import { createRandom, type Random, shuffle } from "../core/random.ts";
import { num, numOrNull, str, strOrNull } from "./row.ts";
import type { SqlDatabase, SqlRow } from "./sql.ts";

/** Default bound on the number of samples kept. */
export const DEFAULT_MAX_SAMPLE_ROWS = 20_000;
/** Default bound on the UTF-8 bytes of the texts kept (8 MiB). */
export const DEFAULT_MAX_SAMPLE_BYTES = 8 * 1024 * 1024;
/** Largest single text accepted, in UTF-8 bytes (64 KiB). */
export const MAX_SAMPLE_TEXT_BYTES = 64 * 1024;

/** One sample offered to the store. */
export interface SampleInput {
  /** The text as the model would receive it. */
  text: string;
  /** The second text of a pair (a pair classifier's input); absent or `null` for a single text. */
  pair?: string | null;
  /** Class index when known (labelled files); `null` or absent for live traffic. */
  label?: number | null;
  /** Token count when the caller already has it; otherwise the store's `countTokens` is used. */
  tokenCount?: number;
}

/** A sample held by the store. */
export interface Sample {
  id: number;
  text: string;
  /** The second text of a pair; `null` for a single text. */
  pair: string | null;
  tokenCount: number;
  /** UTF-8 bytes of `text`, what the byte bound counts. */
  bytes: number;
  /** Length bucket index (see {@link SampleBucketStats}). */
  bucket: number;
  /** Where it came from: `file`, `live`, … */
  source: string;
  label: number | null;
  /** Milliseconds since the epoch. */
  createdAt: number;
}

/** What {@link SampleStore.add} did with a batch. */
export interface AddSamplesResult {
  /** Samples now in the pool. */
  added: number;
  /** Samples dropped because the pool holds the same text (or it came twice in the batch). */
  duplicates: number;
  /** Rows removed from the pool to stay within its bounds. */
  evicted: number;
  /** Distinct samples the reservoir did not keep (the pool was full), or longer than the byte bound. */
  rejected: number;
}

/** One length bucket: tokens in [minTokens, maxTokens). */
export interface SampleBucketStats {
  bucket: number;
  minTokens: number;
  /** Exclusive upper bound; `null` for the last, unbounded bucket. */
  maxTokens: number | null;
  /** Distinct samples ever offered in this bucket. */
  seen: number;
  /** Samples held now. */
  kept: number;
  /** UTF-8 bytes of the texts held now. */
  bytes: number;
}

/** The pool's state. */
export interface SampleStats {
  rows: number;
  bytes: number;
  seen: number;
  maxRows: number;
  maxBytes: number;
  /** Totals since the database was created. */
  duplicates: number;
  evicted: number;
  rejected: number;
  buckets: SampleBucketStats[];
}

/** Options for {@link SampleStore.pick}. */
export interface PickOptions {
  /** How many samples; fewer are returned when the pool holds fewer. */
  n: number;
  /** Same seed and same pool → same samples. */
  seed: number;
  /** Sample ids not to return (e.g. those already picked for calibration). */
  exclude?: Iterable<number>;
}

/** Disjoint calibration and validation sets. */
export interface DisjointPick {
  calibration: Sample[];
  validation: Sample[];
}

/** The sample pool. Every method is synchronous and atomic. */
export interface SampleStore {
  /**
   * Offers samples; keeps, deduplicates and evicts as described in the module
   * comment. The whole batch is one transaction: all or nothing. A pool over
   * lowered bounds (a config change) is first brought within them, the same
   * stratified way, even by an empty batch.
   *
   * @throws TEXT_NOT_STRING | TEXT_EMPTY | TEXT_TOO_LARGE | DATA_MALFORMED for a bad sample (nothing is written)
   * @throws STORE_BUSY | DISK_FULL | STORE_FAILED
   */
  add(samples: readonly SampleInput[], options: { source: string }): AddSamplesResult;
  /**
   * Up to `n` samples chosen at random with `seed`, stratified by length bucket
   * (each bucket contributes in proportion to what it holds).
   */
  pick(options: PickOptions): Sample[];
  /**
   * Two disjoint stratified picks from one seed.
   *
   * @throws CALIB_EMPTY when the pool holds fewer than `nCalib + nVal` samples
   */
  pickDisjoint(nCalib: number, nVal: number, seed: number): DisjointPick;
  /** A sample by id, or `undefined`. */
  get(id: number): Sample | undefined;
  /** Rows held. */
  count(): number;
  /** Totals and per-bucket figures. */
  stats(): SampleStats;
}

/** Options for {@link createSampleStore}. */
export interface SampleStoreOptions {
  /** Token count of a text (the tokenizer's), used when a sample carries none. */
  countTokens?: (text: string, pair?: string) => number;
  /** Most samples held. @defaultValue {@link DEFAULT_MAX_SAMPLE_ROWS} */
  maxRows?: number;
  /** Most UTF-8 text bytes held. @defaultValue {@link DEFAULT_MAX_SAMPLE_BYTES} */
  maxBytes?: number;
  /** Randomness of the reservoir; seed it in tests. @defaultValue Math.random */
  random?: Random;
  /** Clock, in ms since the epoch. @defaultValue Date.now */
  now?: () => number;
}

const WHITESPACE_RUN = /\s+/gu;
const NOT_BLANK = /\S/u;
const SOURCE = /^[A-Za-z0-9][\w.:-]{0,63}$/;

/** The text that decides duplicates: NFC, trimmed, whitespace runs as one space. */
export function normalizeSampleText(text: string): string {
  return text.normalize("NFC").trim().replace(WHITESPACE_RUN, " ");
}

/** SHA-256 of {@link normalizeSampleText}, the pool's duplicate key. */
export function sampleContentHash(text: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(normalizeSampleText(text), "utf8").digest());
}

/** A bucket row as the reservoir works on it: the same fields the stats report. */
type Bucket = SampleBucketStats;

function readBuckets(q: Statements): Bucket[] {
  return q.buckets.all().map((r) => ({
    bucket: num(r, "bucket"),
    minTokens: num(r, "min_tokens"),
    maxTokens: numOrNull(r, "max_tokens"),
    seen: num(r, "seen"),
    kept: num(r, "kept"),
    bytes: num(r, "bytes"),
  }));
}

function bucketIndex(buckets: readonly Bucket[], tokens: number): number {
  for (let i = buckets.length - 1; i >= 0; i--) {
    const b = buckets[i] as Bucket;
    if (tokens >= b.minTokens) return i;
  }
  return 0;
}

function toSample(r: SqlRow): Sample {
  return {
    id: num(r, "id"),
    text: str(r, "text"),
    pair: strOrNull(r, "pair"),
    tokenCount: num(r, "token_count"),
    bytes: num(r, "bytes"),
    bucket: num(r, "bucket"),
    source: str(r, "source"),
    label: numOrNull(r, "label"),
    createdAt: num(r, "created_at"),
  };
}

function positiveInt(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new QuantdError("CONFIG_INVALID", `${what} must be a positive integer, got ${value}`, {
      details: { [what]: value },
    });
  }
  return value;
}

function count(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new QuantdError("USAGE", `${what} must be a non-negative integer, got ${value}`);
  }
  return value;
}

interface Prepared {
  text: string;
  pair: string | null;
  label: number | null;
  hash: Uint8Array;
  hashKey: string;
  bytes: number;
  tokenCount: number | undefined;
  /** `countTokens(text)`, computed before the transaction. */
  countedTokens?: number;
}

function validate(samples: readonly SampleInput[]): Prepared[] {
  return samples.map((s, i) => {
    const text: unknown = s?.text;
    if (typeof text !== "string") {
      throw new QuantdError("TEXT_NOT_STRING", `sample ${i}: text must be a string`, {
        details: { index: i },
      });
    }
    const pair: unknown = s.pair ?? null;
    if (pair !== null && (typeof pair !== "string" || !NOT_BLANK.test(pair))) {
      throw new QuantdError("TEXT_NOT_STRING", `sample ${i}: pair must be a non-empty string`, {
        details: { index: i },
      });
    }
    // A pair is one sample: its two texts count together against the byte bounds.
    const bytes = Buffer.byteLength(text, "utf8") + (pair === null ? 0 : Buffer.byteLength(pair, "utf8"));
    if (bytes > MAX_SAMPLE_TEXT_BYTES) {
      throw new QuantdError(
        "TEXT_TOO_LARGE",
        `sample ${i}: text is ${bytes} bytes, more than ${MAX_SAMPLE_TEXT_BYTES}`,
        { details: { index: i, bytes } },
      );
    }
    if (!NOT_BLANK.test(text)) {
      throw new QuantdError("TEXT_EMPTY", `sample ${i}: text is empty`, { details: { index: i } });
    }
    const label = s.label ?? null;
    if (label !== null && !(Number.isSafeInteger(label) && label >= 0)) {
      throw new QuantdError("DATA_MALFORMED", `sample ${i}: label must be a class index (integer ≥ 0)`, {
        details: { index: i, label: String(label) },
      });
    }
    if (s.tokenCount !== undefined && !(Number.isSafeInteger(s.tokenCount) && s.tokenCount >= 0)) {
      throw new QuantdError("DATA_MALFORMED", `sample ${i}: tokenCount must be an integer ≥ 0`, {
        details: { index: i },
      });
    }
    // NUL never occurs in a text a user sends through JSON by accident: it keeps (a, bc) apart from (ab, c).
    const hash = sampleContentHash(pair === null ? text : `${text}\u0000${pair}`);
    return {
      text,
      pair,
      label,
      hash,
      hashKey: Buffer.from(hash).toString("hex"),
      bytes,
      tokenCount: s.tokenCount,
    };
  });
}

/** The statements of the sample pool, prepared once per connection. */
function prepareStatements(db: SqlDatabase) {
  const sampleColumns = "id, text, pair, token_count, bytes, bucket, source, label, created_at";
  return {
    findHash: db.prepare("SELECT id FROM samples WHERE content_hash = ?"),
    insert: db.prepare(
      "INSERT INTO samples (text, pair, token_count, bytes, bucket, source, label, content_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    remove: db.prepare("DELETE FROM samples WHERE id = ?"),
    bytesOf: db.prepare("SELECT bytes FROM samples WHERE id = ?"),
    bucketIds: db.prepare("SELECT id, bucket FROM samples"),
    setSeen: db.prepare("UPDATE sample_buckets SET seen = ? WHERE bucket = ?"),
    allIds: db.prepare("SELECT id, bucket FROM samples ORDER BY id"),
    byIds: db.prepare(`SELECT ${sampleColumns} FROM samples WHERE id IN (SELECT value FROM json_each(?))`),
    byId: db.prepare(`SELECT ${sampleColumns} FROM samples WHERE id = ?`),
    countRows: db.prepare("SELECT count(*) AS n FROM samples"),
    // Read on every add (each capture flush) and stats: prepared here, not per call (a connection keeps each statement until it closes).
    buckets: db.prepare(
      "SELECT bucket, min_tokens, max_tokens, seen, kept, bytes FROM sample_buckets ORDER BY bucket",
    ),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

/** A row of the pool and its bucket. */
interface PoolRow {
  id: number;
  bucket: number;
}

/**
 * One add's view of the pool inside its transaction: the bucket figures and
 * totals, kept current as rows are kept and evicted, and what the add did.
 */
class Reservoir {
  readonly result: AddSamplesResult = { added: 0, duplicates: 0, evicted: 0, rejected: 0 };
  private rows = 0;
  private bytes = 0;
  private seen = 0;
  /**
   * Ids per bucket, loaded on the first eviction: a random pick and a
   * removal are then O(1) instead of an OFFSET scan per eviction.
   */
  private idsByBucket: number[][] | undefined;

  constructor(
    private readonly buckets: Bucket[],
    private readonly q: Statements,
    private readonly bounds: { maxRows: number; maxBytes: number },
    private readonly random: Random,
  ) {
    for (const b of buckets) {
      this.rows += b.kept;
      this.bytes += b.bytes;
      this.seen += b.seen;
    }
  }

  /**
   * Counts a distinct sample of `tokens` as seen and keeps it with the
   * reservoir's probability (always while the pool has room), evicting to
   * stay within the bounds.
   */
  offer(p: Prepared, tokens: number, source: string, createdAt: number): void {
    const bi = bucketIndex(this.buckets, tokens);
    const bucket = this.buckets[bi] as Bucket;
    bucket.seen++;
    this.seen++;
    const full = this.rows >= this.bounds.maxRows || this.bytes + p.bytes > this.bounds.maxBytes;
    // Reservoir step: keep with probability K/N once full.
    if (full && this.random() * this.seen >= this.rows) {
      this.result.rejected++;
      return;
    }
    const id = this.q.insert.run(
      p.text,
      p.pair,
      tokens,
      p.bytes,
      bi,
      source,
      p.label,
      p.hash,
      createdAt,
    ).lastInsertRowid;
    bucket.kept++;
    bucket.bytes += p.bytes;
    this.rows++;
    this.bytes += p.bytes;
    this.result.added++;
    this.idsByBucket?.[bi]?.push(id);
    this.evictUntilWithin({ id, bucket: bi });
  }

  /** Evicts until both bounds hold, never `keep` (the row just added). */
  evictUntilWithin(keep: PoolRow): void {
    while (this.rows > this.bounds.maxRows || this.bytes > this.bounds.maxBytes) {
      this.idsByBucket ??= this.loadIds();
      const victim = pickVictim(this.buckets, this.idsByBucket, this.rows, this.seen, keep, this.random);
      if (victim === undefined) break;
      const vb = this.buckets[victim.bucket] as Bucket;
      const vbytes = num(this.q.bytesOf.get(victim.id) ?? { bytes: 0 }, "bytes");
      this.q.remove.run(victim.id);
      vb.kept--;
      vb.bytes -= vbytes;
      this.rows--;
      this.bytes -= vbytes;
      this.result.evicted++;
    }
  }

  /** Writes each bucket's seen count back. */
  saveSeen(): void {
    for (const b of this.buckets) this.q.setSeen.run(b.seen, b.bucket);
  }

  private loadIds(): number[][] {
    const out = this.buckets.map((): number[] => []);
    for (const r of this.q.bucketIds.all()) out[num(r, "bucket")]?.push(num(r, "id"));
    return out;
  }
}

/**
 * Up to `n` ids taken from `perBucket` (shuffled ids per bucket), each bucket
 * contributing in proportion to what it holds; what is taken is removed from
 * `perBucket`.
 */
function takeStratified(perBucket: number[][], n: number, seed: number): number[] {
  const available = perBucket.reduce((s, ids) => s + ids.length, 0);
  const want = Math.min(n, available);
  if (want === 0) return [];
  // Largest-remainder allocation of `want` over the buckets, by what each holds.
  const quotas = perBucket.map((ids) => (ids.length * want) / available);
  const alloc = quotas.map(Math.floor);
  let left = want - alloc.reduce((s, k) => s + k, 0);
  const byRemainder = quotas
    .map((q, i) => ({ i, r: q - Math.floor(q) }))
    .sort((a, b) => b.r - a.r || a.i - b.i);
  for (const { i } of byRemainder) {
    if (left === 0) break;
    alloc[i] = (alloc[i] ?? 0) + 1;
    left--;
  }
  const out: number[] = [];
  perBucket.forEach((ids, i) => {
    out.push(...ids.splice(0, alloc[i] ?? 0));
  });
  return shuffle(out, createRandom(seed ^ 0x5bd1e995));
}

/** The {@link SampleStore} over one connection. */
class SqliteSampleStore implements SampleStore {
  private readonly maxRows: number;
  private readonly maxBytes: number;
  private readonly random: Random;
  private readonly now: () => number;
  private readonly countTokens: SampleStoreOptions["countTokens"];
  private readonly q: Statements;
  private readonly counters: ReturnType<typeof createCounters>;

  constructor(
    private readonly db: SqlDatabase,
    options: SampleStoreOptions,
  ) {
    this.maxRows = positiveInt(options.maxRows ?? DEFAULT_MAX_SAMPLE_ROWS, "maxRows");
    this.maxBytes = positiveInt(options.maxBytes ?? DEFAULT_MAX_SAMPLE_BYTES, "maxBytes");
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
    this.countTokens = options.countTokens;
    this.q = prepareStatements(db);
    this.counters = createCounters(db);
  }

  add(samples: readonly SampleInput[], opts: { source: string }): AddSamplesResult {
    const source = checkSource(opts.source);
    const prepared = validate(samples);
    this.countTokensOfFresh(prepared);
    const createdAt = this.now();
    return this.db.transaction(() => {
      const bounds = { maxRows: this.maxRows, maxBytes: this.maxBytes };
      const pool = new Reservoir(readBuckets(this.q), this.q, bounds, this.random);
      // The bounds may have been lowered since the last run (a config change): apply them first.
      pool.evictUntilWithin({ id: -1, bucket: -1 });
      const inBatch = new Set<string>();
      prepared.forEach((p, index) => {
        if (inBatch.has(p.hashKey) || this.q.findHash.get(p.hash) !== undefined) {
          pool.result.duplicates++;
          return;
        }
        inBatch.add(p.hashKey);
        if (p.bytes > this.maxBytes) {
          pool.result.rejected++;
          return;
        }
        pool.offer(p, this.tokensOf(p, index), source, createdAt);
      });
      pool.saveSeen();
      this.countOutcomes(pool.result);
      return pool.result;
    });
  }

  pick({ n, seed, exclude }: PickOptions): Sample[] {
    count(n, "n");
    return this.db.transaction(() => {
      const perBucket = this.stratifiedOrder(seed, new Set(exclude ?? []));
      return this.load(takeStratified(perBucket, n, seed));
    }, "deferred");
  }

  pickDisjoint(nCalib: number, nVal: number, seed: number): DisjointPick {
    count(nCalib, "nCalib");
    count(nVal, "nVal");
    return this.db.transaction(() => {
      const perBucket = this.stratifiedOrder(seed, new Set());
      const available = perBucket.reduce((s, ids) => s + ids.length, 0);
      if (available < nCalib + nVal) {
        throw new QuantdError(
          "CALIB_EMPTY",
          `the sample pool holds ${available} samples; ${nCalib} calibration + ${nVal} validation need ${nCalib + nVal}`,
          { details: { available, needed: nCalib + nVal } },
        );
      }
      // takeStratified removes what it takes, so the second pick cannot overlap the first.
      const calibration = this.load(takeStratified(perBucket, nCalib, seed));
      const validation = this.load(takeStratified(perBucket, nVal, seed + 1));
      return { calibration, validation };
    }, "deferred");
  }

  get(id: number): Sample | undefined {
    const r = this.q.byId.get(id);
    return r === undefined ? undefined : toSample(r);
  }

  count(): number {
    return num(this.q.countRows.get() ?? { n: 0 }, "n");
  }

  stats(): SampleStats {
    const buckets = readBuckets(this.q);
    return {
      rows: buckets.reduce((s, b) => s + b.kept, 0),
      bytes: buckets.reduce((s, b) => s + b.bytes, 0),
      seen: buckets.reduce((s, b) => s + b.seen, 0),
      maxRows: this.maxRows,
      maxBytes: this.maxBytes,
      duplicates: this.counters.get("samples.duplicates"),
      evicted: this.counters.get("samples.evicted"),
      rejected: this.counters.get("samples.rejected"),
      buckets,
    };
  }

  /**
   * Tokenizing is the slow part of an add (~0.15 ms a sentence): do it before
   * taking the write lock, for the samples not already in the pool, so a big
   * file does not hold live capture off for seconds.
   */
  private countTokensOfFresh(prepared: Prepared[]): void {
    const fresh = new Set<string>();
    prepared.forEach((p, index) => {
      if (fresh.has(p.hashKey) || this.q.findHash.get(p.hash) !== undefined) return;
      fresh.add(p.hashKey);
      p.countedTokens = this.tokensOf(p, index);
    });
  }

  private tokensOf(p: Prepared, index: number): number {
    if (p.tokenCount !== undefined) return p.tokenCount;
    const known = p.countedTokens;
    if (known !== undefined) return known;
    if (this.countTokens === undefined) {
      throw new QuantdError(
        "INTERNAL",
        "sample store has no countTokens and the sample carries no tokenCount",
      );
    }
    // A pair is stratified by the length of the two texts the model reads together.
    const n = p.pair === null ? this.countTokens(p.text) : this.countTokens(p.text, p.pair);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new QuantdError("INTERNAL", `countTokens returned ${n} for sample ${index}`);
    }
    return n;
  }

  private countOutcomes(result: AddSamplesResult): void {
    if (result.duplicates > 0) this.counters.add("samples.duplicates", result.duplicates);
    if (result.evicted > 0) this.counters.add("samples.evicted", result.evicted);
    if (result.rejected > 0) this.counters.add("samples.rejected", result.rejected);
  }

  private stratifiedOrder(seed: number, exclude: ReadonlySet<number>): number[][] {
    const random = createRandom(seed);
    const perBucket = readBuckets(this.q).map((): number[] => []);
    for (const r of this.q.allIds.all()) {
      const id = num(r, "id");
      if (!exclude.has(id)) perBucket[num(r, "bucket")]?.push(id);
    }
    return perBucket.map((ids) => shuffle(ids, random));
  }

  private load(ids: readonly number[]): Sample[] {
    if (ids.length === 0) return [];
    const found = new Map<number, Sample>();
    for (const r of this.q.byIds.all(JSON.stringify(ids))) {
      const s = toSample(r);
      found.set(s.id, s);
    }
    return ids.flatMap((id) => {
      const s = found.get(id);
      return s === undefined ? [] : [s];
    });
  }
}

function checkSource(source: string): string {
  if (typeof source !== "string" || !SOURCE.test(source)) {
    throw new QuantdError(
      "USAGE",
      `sample source must be a short name of letters, digits and . _ : - (got ${JSON.stringify(source)})`,
    );
  }
  return source;
}

/**
 * The {@link SampleStore} over a migrated database.
 *
 * @throws CONFIG_INVALID when `maxRows` or `maxBytes` is not a positive integer
 */
export function createSampleStore(db: SqlDatabase, options: SampleStoreOptions = {}): SampleStore {
  return new SqliteSampleStore(db, options);
}

/**
 * The row to evict: a uniformly random row (never `keep`, the sample just
 * added, which is in `idsByBucket`) of the bucket holding the most above its share `rows·seen_b/seen`.
 * Removes the chosen id from `idsByBucket`.
 */
function pickVictim(
  buckets: readonly Bucket[],
  idsByBucket: number[][],
  rows: number,
  seen: number,
  keep: PoolRow,
  random: Random,
): PoolRow | undefined {
  let best = -1;
  let bestExcess = Number.NEGATIVE_INFINITY;
  buckets.forEach((b, i) => {
    const ids = idsByBucket[i] ?? [];
    const evictable = ids.length - (i === keep.bucket ? 1 : 0);
    if (evictable <= 0) return;
    const excess = b.kept - (rows * b.seen) / seen;
    if (excess > bestExcess) {
      bestExcess = excess;
      best = i;
    }
  });
  const ids = idsByBucket[best];
  if (ids === undefined) return undefined;
  for (;;) {
    const j = Math.floor(random() * ids.length);
    const id = ids[j] as number;
    if (id === keep.id) continue;
    ids[j] = ids[ids.length - 1] as number;
    ids.pop();
    return { id, bucket: best };
  }
}
