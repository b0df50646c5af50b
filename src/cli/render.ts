/**
 * Small rendering helpers for human CLI output: aligned tables, number formats
 * and a progress line that only appears on an interactive stderr (so logs and
 * pipes stay clean).
 */

/** Column alignment for {@link renderTable}. */
export type Align = "left" | "right";

/**
 * Renders rows as aligned columns separated by two spaces, without trailing
 * spaces. Numbers read best right-aligned; pass `align` per column.
 *
 * @param rows - the first row may be a header
 * @param align - per-column alignment @defaultValue every column "left"
 */
export function renderTable(rows: readonly (readonly string[])[], align: readonly Align[] = []): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map((row) =>
    row
      .map((cell, i) =>
        (align[i] ?? "left") === "right" ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!),
      )
      .join("  ")
      .trimEnd(),
  );
}

/** A fraction as a percentage with two decimals (`0.8532` → `85.32%`). */
export function formatPercent(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

/** Milliseconds with a precision that suits the magnitude. */
export function formatMs(ms: number): string {
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

/** A byte count in B, KB, MB or GB (powers of 1024). */
export function formatBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** A progress reporter; a no-op when stderr is not a terminal. */
export interface Progress {
  /** Reports `done` of `total` units. */
  update(done: number, total: number): void;
  /** Clears the progress line. */
  done(): void;
}

/** A stream that may be a terminal (process.stderr). */
export interface MaybeTty {
  isTTY?: boolean;
  write(chunk: string): unknown;
}

/**
 * A one-line progress indicator on `stream`, redrawn at most every 100 ms.
 * When the stream is not a TTY nothing is written at all.
 *
 * @param stream - @defaultValue process.stderr
 */
export function createProgress(label: string, stream: MaybeTty = process.stderr): Progress {
  if (stream.isTTY !== true) return { update() {}, done() {} };
  let last = 0;
  let shown = false;
  return {
    update(done, total) {
      const now = performance.now();
      if (now - last < 100 && done < total) return;
      last = now;
      shown = true;
      const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
      stream.write(`\r\x1b[2K${label} ${done}/${total} (${pct}%)`);
    },
    done() {
      if (shown) stream.write("\r\x1b[2K");
      shown = false;
    },
  };
}
