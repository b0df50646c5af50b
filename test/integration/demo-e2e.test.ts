/**
 * `quantd demo` end to end, as a user runs it from another directory: the
 * fp32 steps, the agent on a temporary socket, a recalibration job that
 * promotes int8, classification through the socket and the int8/fp32
 * comparison — asserted on the summary lines and on `--json`. Both runs go in
 * parallel to keep the test's wall time near one demo's.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "../helpers/paths.ts";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function demo(args: string[], cwd: string): Promise<Run> {
  const env: Record<string, string> = {};
  // The demo must not depend on the caller's QUANTD_* settings.
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && !k.startsWith("QUANTD_")) env[k] = v;
  const p = Bun.spawn(["bun", join(repoRoot, "src/cli/main.ts"), "demo", ...args], {
    cwd,
    env,
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
}

function percent(text: string, re: RegExp): number {
  const m = re.exec(text);
  if (m === null) throw new Error(`no match for ${re} in:\n${text}`);
  return Number(m[1]) / 100;
}

describe("quantd demo", () => {
  test("recalibrates to int8 in the agent, serves it over the socket and summarizes fp32 vs int8", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "quantd-demo-cwd-"));
    try {
      const [human, json] = await Promise.all([
        demo(["--limit", "48"], cwd),
        demo(["--json", "--limit", "32"], cwd),
      ]);

      expect(human.stderr).not.toContain("error");
      expect(human.code).toBe(0);
      const out = human.stdout;
      for (const [i, step] of [
        "load",
        "classify",
        "evaluate",
        "agent",
        "seed",
        "recalibrate",
        "serve",
        "compare",
      ].entries()) {
        expect(out).toContain(`[${i + 1}/8] ${step}`);
      }
      const summary = out.slice(out.indexOf("\nSummary"));
      expect(summary).toMatch(/accuracy\s+\d+\.\d\d% on 48 SST-2 dev sentences \(fp32\)/);
      expect(summary).toMatch(
        /recalibration\s+SUCCEEDED in [\d.]+ s: 128 calibration \+ 256 held-out store samples, int8-static promoted as version 2/,
      );
      expect(summary).toMatch(/stages\s+pick .*, quantize .*, benchmark .*, promote .*, report /);
      expect(
        percent(summary, /held-out gate\s+int8 = fp32 on ([\d.]+)% of 256 \(gate 99\.50%\)/),
      ).toBeGreaterThanOrEqual(0.995);
      expect(summary).toMatch(/size\s+fp32 28\.9 MB → int8 [\d.]+ MB \([3-4]\.\d× smaller\)/);
      const fp32Acc = percent(summary, /dev accuracy\s+fp32 ([\d.]+)% → int8 [\d.]+% on 48 sentences/);
      const int8Acc = percent(summary, /dev accuracy\s+fp32 [\d.]+% → int8 ([\d.]+)% on 48 sentences/);
      expect(Math.abs(fp32Acc - int8Acc)).toBeLessThanOrEqual(2 / 48);
      expect(percent(summary, /dev agreement\s+int8 = fp32 on ([\d.]+)%/)).toBeGreaterThanOrEqual(0.95);
      expect(summary).toMatch(/dev latency\s+p50 fp32 [\d.]+ ms → int8 [\d.]+ ms \([\d.]+× faster\)/);
      expect(summary).toMatch(/socket\s+5 sentences served by int8-static version 2, [45]\/5 labels as fp32/);
      // The temporary state directory and socket are gone.
      const dir = /state directory (\S+): SQLite store/.exec(out)?.[1];
      expect(dir).toBeDefined();
      expect(existsSync(dir!)).toBe(false);

      expect(json.code).toBe(0);
      const j = JSON.parse(json.stdout) as {
        steps: string[];
        classify: { label: string }[];
        evaluate: { n: number; accuracy: number; latencyMsP50: number; throughputPerSec: number };
        recalibrate: {
          state: string;
          result: { decision: string; candidate: { kind: string; version: number } };
        };
        serve: { version: number; kind: string; results: { label: string }[] };
        compare: {
          n: number;
          agreement: number;
          fp32: { bytes: number };
          int8: { bytes: number; accuracy: number };
        };
      };
      expect(j.steps).toEqual([
        "load",
        "classify",
        "evaluate",
        "agent",
        "seed",
        "recalibrate",
        "serve",
        "compare",
      ]);
      expect(j.classify.map((c) => c.label)).toEqual([
        "positive",
        "negative",
        "positive",
        "negative",
        "negative",
      ]);
      expect(j.evaluate.n).toBe(32);
      expect(j.evaluate.accuracy).toBeGreaterThan(0.6);
      expect(j.evaluate.latencyMsP50).toBeGreaterThan(0);
      expect(j.evaluate.throughputPerSec).toBeGreaterThan(0);
      expect(j.recalibrate.state).toBe("SUCCEEDED");
      expect(j.recalibrate.result.decision).toBe("promoted");
      expect(j.recalibrate.result.candidate).toMatchObject({ kind: "int8-static", version: 2 });
      expect(j.serve).toMatchObject({ version: 2, kind: "int8-static" });
      expect(j.serve.results).toHaveLength(5);
      expect(j.compare.n).toBe(32);
      expect(j.compare.int8.bytes).toBeLessThan(0.3 * j.compare.fp32.bytes);
      expect(j.compare.agreement).toBeGreaterThanOrEqual(0.9);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  }, 240_000);
});
