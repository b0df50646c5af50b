import { expect, test } from "bun:test";
import { createBenchProgress } from "../../src/bench/progress.ts";

function sink(isTTY: boolean): {
  stream: { isTTY: boolean; columns: number; write(s: string): void };
  text(): string;
} {
  let buf = "";
  return {
    stream: {
      isTTY,
      columns: 60,
      write(s: string) {
        buf += s;
      },
    },
    text: () => buf,
  };
}

test("not a terminal: one plain line per tenth of the work, no carriage returns", () => {
  const s = sink(false);
  const p = createBenchProgress(s.stream);
  for (let i = 1; i <= 200; i++) p.update({ done: i, total: 200, what: `run ${i}` });
  p.done();
  const lines = s.text().trimEnd().split("\n");
  expect(s.text()).not.toContain("\r");
  // the start, then 10 %, 20 %, …, 100 %
  expect(lines).toHaveLength(11);
  expect(lines[0]).toBe("bench: 0% (1/200) run 1");
  expect(lines[1]).toBe("bench: 10% (20/200) run 20");
  expect(lines.at(-1)).toBe("bench: 100% (200/200) run 200");
});

test("terminal: a redrawn bar that fits the width, cleared at the end", () => {
  const s = sink(true);
  const p = createBenchProgress(s.stream);
  p.update({ done: 5, total: 10, what: "a very long description of what is being measured right now" });
  p.update({ done: 10, total: 10, what: "last" });
  p.done();
  const frames = s
    .text()
    .split("\r\x1b[2K")
    .filter((f) => f !== "");
  expect(frames[0]).toStartWith("[############------------]  50% a very");
  expect(frames[0]!.length).toBeLessThanOrEqual(60);
  expect(frames[1]).toBe("[########################] 100% last");
  expect(s.text().endsWith("\r\x1b[2K")).toBe(true);
});
