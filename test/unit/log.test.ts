/**
 * Log levels, formats and the back-off of repeating errors, with a clock the
 * test moves: which lines pass a threshold, journald's priority prefixes, the
 * JSON fields, and that an error repeated every second is written at 0, 2, 6,
 * 14 … s with the count of those left out.
 */
import { describe, expect, test } from "bun:test";
import { createLogger, type LoggerOptions, levelOf } from "../../src/log.ts";

function capture(opts: Omit<LoggerOptions, "write" | "now">) {
  const lines: string[] = [];
  let t = Date.UTC(2026, 0, 1);
  const logger = createLogger({ ...opts, write: (l) => lines.push(l), now: () => t });
  return { lines, logger, advance: (ms: number) => (t += ms) };
}

describe("log", () => {
  test("a line's level comes from its words: QuantdError renderings are errors", () => {
    expect(levelOf("fleet: error FLEET_UNAVAILABLE: MQTT connection error: refused")).toBe("error");
    expect(levelOf("error STORE_BUSY: locked")).toBe("error");
    expect(levelOf("swap: warning: p95 ratio 1.3")).toBe("warn");
    expect(levelOf("listening on /run/quantd.sock")).toBe("info");
    expect(levelOf("no errors found")).toBe("info");
  });

  test("the threshold drops less severe messages; journald gets syslog priorities", () => {
    const { lines, logger } = capture({ level: "warn", journald: true });
    logger.debug("d");
    logger.info("i");
    logger.warn("w");
    logger.error("e");
    logger.line("fleet: error FLEET_UNAVAILABLE: down");
    expect(lines).toEqual(["<4>w", "<3>e", "<3>fleet: error FLEET_UNAVAILABLE: down"]);
    const all = capture({ level: "debug", journald: true });
    all.logger.debug("d");
    all.logger.info("i");
    expect(all.lines).toEqual(["<7>d", "<6>i"]);
  });

  test("json lines carry time, level, message and the error code", () => {
    const { lines, logger } = capture({ format: "json" });
    logger.line("jobs: error JOB_INTERRUPTED: runner gone");
    logger.info("ready");
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      {
        time: "2026-01-01T00:00:00.000Z",
        level: "error",
        msg: "jobs: error JOB_INTERRUPTED: runner gone",
        code: "JOB_INTERRUPTED",
      },
      { time: "2026-01-01T00:00:00.000Z", level: "info", msg: "ready" },
    ]);
  });

  test("an error repeated every second is written with back-off, saying how many were left out", () => {
    const { lines, logger, advance } = capture({ backoff: { firstMs: 2000, maxMs: 16_000 } });
    const down = "fleet: error FLEET_UNAVAILABLE: connect ECONNREFUSED";
    const writtenAt: number[] = [];
    for (let s = 0; s <= 40; s++) {
      const before = lines.length;
      logger.line(down);
      if (s === 5) logger.line("fleet: error STORE_BUSY: another line is not held back by the first");
      if (lines.length > before) writtenAt.push(s);
      advance(1000);
    }
    expect(writtenAt).toEqual([0, 2, 5, 6, 14, 30]);
    expect(lines[1]).toBe(`${down} (1 more like it left out; next in 4 s at the earliest)`);
    expect(lines.at(-1)).toBe(`${down} (15 more like it left out; next in 16 s at the earliest)`);
    // Information is never held back.
    for (let i = 0; i < 3; i++) logger.info("telemetry sent");
    expect(lines.slice(-3)).toEqual(["telemetry sent", "telemetry sent", "telemetry sent"]);
    // After a quiet spell longer than the longest interval, the error is new again.
    advance(17_000);
    logger.line(down);
    expect(lines.at(-1)).toBe(down);
  });
});
