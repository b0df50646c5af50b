/**
 * listenForStop: once called, SIGTERM and SIGINT resolve it with their name
 * instead of ending the process, and its handlers go with the first signal.
 */
import { expect, test } from "bun:test";
import { listenForStop } from "../../src/cli/stop-signal.ts";

test.each(["SIGTERM", "SIGINT"] as const)(
  "%s resolves it with its name, and it stops listening",
  async (name) => {
    const before = process.listenerCount(name);
    const stopped = listenForStop();
    expect(process.listenerCount(name)).toBe(before + 1);
    process.kill(process.pid, name);
    expect(await stopped).toBe(name);
    expect(process.listenerCount("SIGTERM")).toBe(before);
    expect(process.listenerCount("SIGINT")).toBe(before);
  },
);
