/**
 * The process figures every Prometheus client library exports as `process_*`
 * (CPU seconds, resident and virtual memory, start time, open and maximum file
 * descriptors), read from `/proc/self` on Linux, from the runtime elsewhere.
 * The agent serves them on `/metrics` and sends them in its MQTT telemetry, so
 * a board no scraper reaches reports the same figures.
 */
import { readdirSync, readFileSync } from "node:fs";

/** One reading of the process figures. */
export interface ProcessFigures {
  /** User plus system CPU time, seconds. */
  cpuSeconds: number;
  residentBytes: number;
  /** Virtual memory size; undefined where /proc is not available. */
  virtualBytes?: number;
  /** When the process started, seconds since the epoch. */
  startTimeSeconds: number;
  /** Open file descriptors; undefined where /proc is not available. */
  openFds?: number;
  /** The soft limit on open file descriptors; undefined where /proc is not available. */
  maxFds?: number;
}

// Taken once: the process started before any module ran, and uptime keeps counting from then.
const START_TIME_SECONDS = Math.round((Date.now() / 1000 - process.uptime()) * 1000) / 1000;

function procNumber(file: string, pattern: RegExp, unit = 1): number | undefined {
  try {
    const m = pattern.exec(readFileSync(file, "utf8"));
    return m === null ? undefined : Number(m[1]) * unit;
  } catch {
    return undefined;
  }
}

function openFds(): number | undefined {
  try {
    // The directory listing itself holds one descriptor while it is read.
    return Math.max(0, readdirSync("/proc/self/fd").length - 1);
  } catch {
    return undefined;
  }
}

/** Reads the figures now. */
export function readProcessFigures(): ProcessFigures {
  const cpu = process.cpuUsage();
  const figures: ProcessFigures = {
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    residentBytes: process.memoryUsage.rss(),
    startTimeSeconds: START_TIME_SECONDS,
  };
  const virtual = procNumber("/proc/self/status", /^VmSize:\s+(\d+)\s+kB/m, 1024);
  if (virtual !== undefined) figures.virtualBytes = virtual;
  const fds = openFds();
  if (fds !== undefined) figures.openFds = fds;
  const max = procNumber("/proc/self/limits", /^Max open files\s+(\d+)/m);
  if (max !== undefined) figures.maxFds = max;
  return figures;
}
