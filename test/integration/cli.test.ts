/**
 * The CLI as a user runs it: real processes (`bun src/cli/main.ts`, `bin/quantd`,
 * `bun run quantd`) on the shipped model and dev set.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot, shippedDevTsv, shippedModelPath } from "../helpers/paths.ts";
import { envWithoutQuantd, runQuantd as quantd, runCommand as run } from "../helpers/run-cli.ts";

// Each test spawns quantd and loads a real model; 5 s is too short on a busy 2-core board.
setDefaultTimeout(60_000);

const version = (await Bun.file(join(repoRoot, "package.json")).json()) as { version: string };

describe("help and version", () => {
  test("--version, through main.ts, bin/quantd and bun run", async () => {
    for (const r of [
      await quantd(["--version"]),
      await run([join(repoRoot, "bin/quantd"), "-V"]),
      await run(["bun", "run", "--silent", "quantd", "--version"]),
    ]) {
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(`quantd ${version.version}`);
    }
  });

  test("--help lists every command; no command prints help on stderr and exits 2", async () => {
    const r = await quantd(["--help"]);
    expect(r.code).toBe(0);
    for (const name of ["demo", "classify", "eval", "help"])
      expect(r.stdout).toMatch(new RegExp(`^  ${name}\\s`, "m"));
    const none = await quantd([]);
    expect(none.code).toBe(2);
    expect(none.stdout).toBe("");
    expect(none.stderr).toContain("Usage: quantd <command>");
  });

  test("`help eval` and `eval --help` show every flag with placeholders and defaults", async () => {
    const a = await quantd(["help", "eval"]);
    const b = await quantd(["eval", "--help"]);
    expect(a.code).toBe(0);
    expect(b.stdout).toBe(a.stdout);
    expect(a.stdout).toContain("Usage: quantd eval --model FILE --data FILE.tsv");
    for (const flag of [
      "--model FILE",
      "--data FILE.tsv",
      "--compare FILE",
      "--tokenizer DIR",
      "--batch N",
      "--threads N",
      "--json",
      "--help",
    ]) {
      expect(a.stdout).toContain(flag);
    }
    expect(a.stdout).toMatch(/--batch N\s+texts per inference call \(default: 32\)/);
  });

  test("agent, job and collect give one --state-dir default, and the agent's actions look there", async () => {
    const helps = await Promise.all(["agent", "job", "collect"].map((c) => quantd([c, "--help"])));
    // Help wraps at its own column in each command: compare the words.
    const defaults = helps.map((h) =>
      h.stdout.match(/^\s+--state-dir DIR\s[^(]*\(default:\s+([^)]*)\)/m)?.[1]?.replace(/\s+/g, " "),
    );
    expect(defaults[0]).toStartWith("$QUANTD_STATE_DIR, else $STATE_DIRECTORY, else");
    expect(new Set(defaults).size).toBe(1);
    const stateDir = mkdtempSync(join(tmpdir(), "quantd-state-default-"));
    try {
      const env: Record<string, string> = { ...envWithoutQuantd(), QUANTD_STATE_DIR: stateDir };
      delete env["RUNTIME_DIRECTORY"];
      const r = await quantd(["agent", "models"], { env });
      expect(r.stderr).toBe(`error NOT_READY: no agent listens on ${join(stateDir, "quantd.sock")}\n`);
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  test("help of an unknown command is a usage error", async () => {
    const r = await quantd(["help", "nope"]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('error USAGE: unknown command "nope"; see quantd --help');
  });
});

describe("classify", () => {
  test("texts as arguments, from any working directory", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "quantd-cli-"));
    try {
      const r = await quantd(["classify", "a wonderful , moving film .", "a dull , lifeless mess ."], {
        cwd,
      });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const lines = r.stdout.trim().split("\n");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/^positive {2}0\.\d{4} {2}a wonderful , moving film \.$/);
      expect(lines[1]).toMatch(/^negative {2}0\.\d{4} {2}a dull , lifeless mess \.$/);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  test("lines on stdin, --json", async () => {
    const r = await quantd(["classify", "--json", "--batch", "2"], {
      stdin: "a wonderful , moving film .\r\na dull , lifeless mess .\nfunny and warm .\n",
    });
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as {
      labels: string[];
      results: { text: string; label: string; labelId: number; score: number; probabilities: number[] }[];
    };
    expect(out.labels).toEqual(["negative", "positive"]);
    expect(out.results.map((x) => x.text)).toEqual([
      "a wonderful , moving film .",
      "a dull , lifeless mess .",
      "funny and warm .",
    ]);
    expect(out.results.map((x) => x.label)).toEqual(["positive", "negative", "positive"]);
    for (const x of out.results) {
      expect(x.score).toBe(x.probabilities[x.labelId]!);
      expect(x.probabilities[0]! + x.probabilities[1]!).toBeCloseTo(1, 6);
    }
  });

  test("a reader that stops early is not an error", async () => {
    const lines = Array.from({ length: 200 }, (_, i) => `sentence ${i} is fine .`).join("\n");
    const r = await run(
      ["bash", "-c", `bun src/cli/main.ts classify --batch 4 | head -1; echo "rc=\${PIPESTATUS[0]}"`],
      {
        stdin: lines,
      },
    );
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/rc=0\n$/);
  });
});

describe("eval", () => {
  test("accuracy on the dev set, as a table and as JSON", async () => {
    const data = join(mkdtempSync(join(tmpdir(), "quantd-cli-")), "dev-64.tsv");
    const text = await Bun.file(shippedDevTsv).text();
    await Bun.write(data, `${text.split("\n").slice(0, 65).join("\n")}\n`);
    try {
      const human = await quantd(["eval", "--model", shippedModelPath, "--data", data, "--batch", "16"]);
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/^accuracy {2}\d+\.\d\d%$/m);
      expect(human.stdout).toContain("(64 texts, 64 labelled)");

      const r = await quantd([
        "eval",
        "--json",
        "-m",
        shippedModelPath,
        "-d",
        data,
        "--compare",
        shippedModelPath,
      ]);
      expect(r.code).toBe(0);
      const out = JSON.parse(r.stdout) as Record<string, number>;
      expect(out["n"]).toBe(64);
      expect(out["accuracy"]).toBeGreaterThan(0.7);
      // The same model on both sides agrees exactly: a check that compare really runs both.
      expect(out["agreement"]).toBe(1);
      expect(out["maxAbsLogitDiff"]).toBe(0);
      expect(out["compareAccuracy"]).toBe(out["accuracy"]!);
      // With the bound the gate decides on: 64 of 64 agreeing certifies only ~95.4 %.
      expect(out["confidence"]).toBe(0.95);
      expect(out["agreementLower"]).toBeCloseTo(0.05 ** (1 / 64), 6);
      const compared = await quantd([
        "eval",
        "-m",
        shippedModelPath,
        "-d",
        data,
        "--compare",
        shippedModelPath,
      ]);
      expect(compared.stdout).toMatch(
        /^agreement {6}100\.0 % \(≥ 95\.4 % at 95 %, n = 64\) top-1, 0 of 64 differ$/m,
      );
    } finally {
      rmSync(join(data, ".."), { recursive: true, force: true });
    }
  });
});

// `quantd demo` (now with the agent, a recalibration job and the socket) is tested end to end, human and
// --json output, in demo-e2e.test.ts: one run takes ~25 s, so it is not repeated here.
