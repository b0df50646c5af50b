/**
 * Resident memory of the current process. On Linux it reads `VmHWM` (the
 * kernel's high-water mark of resident memory, which catches short peaks a
 * sampler would miss) and `VmRSS` from `/proc/self/status`; elsewhere it falls
 * back to `process.resourceUsage().maxRSS`.
 */
import { readFileSync } from "node:fs";

/** Memory figures of one process, in bytes. */
export interface ProcessMemory {
  /** Peak resident set size since the process started. */
  peakRssBytes: number;
  /** Current resident set size. */
  rssBytes: number;
  /** Where the figures came from. */
  source: "proc-status" | "resource-usage";
}

function kbField(status: string, name: string): number | undefined {
  const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m").exec(status);
  return m === null ? undefined : Number(m[1]) * 1024;
}

/**
 * Reads the peak and current resident memory of this process, or of another
 * one by pid (Linux only for another process: a bench watching its children).
 */
export function readProcessMemory(pid: number | "self" = "self"): ProcessMemory {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const peak = kbField(status, "VmHWM");
    const rss = kbField(status, "VmRSS");
    if (peak !== undefined && rss !== undefined)
      return { peakRssBytes: peak, rssBytes: rss, source: "proc-status" };
  } catch {
    // not Linux (or /proc not mounted): fall through to the portable figure
  }
  if (pid !== "self") return { peakRssBytes: 0, rssBytes: 0, source: "resource-usage" };
  // maxRSS is in kilobytes on every platform Node and Bun report it for.
  const peak = process.resourceUsage().maxRSS * 1024;
  return { peakRssBytes: peak, rssBytes: process.memoryUsage().rss, source: "resource-usage" };
}

/**
 * Peak resident memory of this process so far, in bytes: the larger of
 * getrusage's `maxRSS` and `/proc/self/status` VmHWM (the latter is what `top`
 * users compare against; the former is what exists off Linux).
 */
export function peakRssBytes(): number {
  const usage = process.resourceUsage().maxRSS * 1024;
  return Math.max(usage, readProcessMemory().peakRssBytes);
}
