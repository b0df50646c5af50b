/**
 * Progress of a benchmark on stderr: a redrawn bar when stderr is a terminal,
 * otherwise a plain line every tenth of the work (so CI logs show the run is
 * alive without filling up with carriage returns).
 */
import type { BenchProgress } from "./measure.ts";

/** A stream that may be a terminal (process.stderr). */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(chunk: string): unknown;
}

/** A progress reporter for {@link BenchOptions.onProgress}. */
export interface BenchProgressBar {
  update(event: BenchProgress): void;
  /** Clears the bar (TTY) or prints nothing more (plain). */
  done(): void;
}

/**
 * Creates a progress reporter writing to `stream`.
 *
 * @param stream - @defaultValue process.stderr
 */
export function createBenchProgress(stream: ProgressStream = process.stderr): BenchProgressBar {
  const tty = stream.isTTY === true;
  let lastDraw = Number.NEGATIVE_INFINITY;
  let lastDecile = -1;
  let shown = false;
  return {
    update({ done, total, what }) {
      const frac = total > 0 ? Math.min(1, done / total) : 1;
      if (tty) {
        const now = performance.now();
        if (now - lastDraw < 80 && done < total) return;
        lastDraw = now;
        const width = 24;
        const filled = Math.round(frac * width);
        const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}%`;
        const room = Math.max(10, (stream.columns ?? 100) - bar.length - 2);
        stream.write(`\r\x1b[2K${bar} ${what.slice(0, room)}`);
        shown = true;
        return;
      }
      const decile = Math.floor(frac * 10);
      if (decile > lastDecile) {
        lastDecile = decile;
        stream.write(`bench: ${Math.floor(frac * 100)}% (${done}/${total}) ${what}\n`);
      }
    },
    done() {
      if (tty && shown) stream.write("\r\x1b[2K");
      shown = false;
    },
  };
}
