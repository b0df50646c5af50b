import { describe, expect, test } from "bun:test";
import type { Command, FlagSpec } from "../../src/cli/command.ts";
import {
  closest,
  expectNoPositionals,
  flagBool,
  flagChoice,
  flagInt,
  flagIntList,
  flagList,
  flagNumber,
  flagRequired,
  flagString,
  parseArgs,
  renderCommandHelp,
  renderMainHelp,
  wrap,
} from "../../src/cli/parse.ts";
import { QuantdError } from "../../src/errors.ts";

const specs: FlagSpec[] = [
  { name: "model", short: "m", type: "string", value: "FILE", description: "model file" },
  {
    name: "seq",
    type: "string",
    multiple: true,
    value: "N,…",
    description: "sequence lengths",
    default: "128",
  },
  { name: "batch", type: "string", value: "N", description: "batch size", default: "32" },
  { name: "json", type: "boolean", description: "print JSON" },
];

function usageOf(fn: () => unknown): QuantdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(QuantdError);
    const qe = err as QuantdError;
    expect(qe.code).toBe("USAGE");
    expect(qe.toLine().split("\n")).toHaveLength(1);
    return qe;
  }
  throw new Error("expected a USAGE error");
}

describe("parseArgs", () => {
  test("long, inline, short, boolean flags and positionals", () => {
    const p = parseArgs(specs, ["--model", "a.onnx", "--batch=8", "--json"]);
    expect(p.flags["model"]).toBe("a.onnx");
    expect(p.flags["batch"]).toBe("8");
    expect(p.flags["json"]).toBe(true);
    expect(p.help).toBe(false);
    const q = parseArgs(specs, ["-m", "b.onnx", "word", "-", "-5"]);
    expect(q.flags["model"]).toBe("b.onnx");
    expect(q.positionals).toEqual(["word", "-", "-5"]);
  });

  test("repeated multiple flags accumulate; -- ends flags", () => {
    const p = parseArgs(specs, ["--seq", "32,64", "--seq=128", "--", "--json", "-m"]);
    expect(p.flags["seq"]).toEqual(["32,64", "128"]);
    expect(p.flags["json"]).toBeUndefined();
    expect(p.positionals).toEqual(["--json", "-m"]);
  });

  test("values may start with a single dash", () => {
    const p = parseArgs(specs, ["--batch", "-3", "--model", "-"]);
    expect(p.flags["batch"]).toBe("-3");
    expect(p.flags["model"]).toBe("-");
  });

  test("--help and -h are always accepted", () => {
    expect(parseArgs(specs, ["--help"]).help).toBe(true);
    expect(parseArgs([], ["-h"]).help).toBe(true);
  });

  test("unknown flag", () => {
    expect(usageOf(() => parseArgs(specs, ["--frob"])).message).toBe("unknown flag --frob");
    expect(usageOf(() => parseArgs(specs, ["--frob=3"])).message).toBe("unknown flag --frob");
    expect(usageOf(() => parseArgs(specs, ["-x"])).message).toBe("unknown flag -x");
    expect(usageOf(() => parseArgs(specs, ["--modle", "a"])).message).toBe(
      "unknown flag --modle (did you mean --model?)",
    );
  });

  test("closest suggests only likely typos", () => {
    expect(closest("evl", ["eval", "demo"])).toBe("eval");
    expect(closest("bacth", ["batch", "json"])).toBe("batch");
    expect(closest("xyz", ["eval", "demo"])).toBeUndefined();
    expect(closest("js", ["json"])).toBeUndefined();
  });

  test("missing value, at the end or before another flag", () => {
    expect(usageOf(() => parseArgs(specs, ["--model"])).message).toContain("--model needs a value (FILE)");
    expect(usageOf(() => parseArgs(specs, ["--model", "--json"])).message).toContain("--model needs a value");
  });

  test("value given to a boolean, and a single flag given twice", () => {
    expect(usageOf(() => parseArgs(specs, ["--json=yes"])).message).toContain("takes no value");
    expect(usageOf(() => parseArgs(specs, ["-m", "a", "--model", "b"])).message).toContain("more than once");
  });
});

describe("typed flag readers", () => {
  const flags = parseArgs(specs, [
    "--model",
    "m.onnx",
    "--batch",
    "16",
    "--seq",
    "32, 128",
    "--seq",
    "256,",
  ]).flags;

  test("strings, required, booleans", () => {
    expect(flagString(flags, "model")).toBe("m.onnx");
    expect(flagString(flags, "absent", "d")).toBe("d");
    expect(flagString(flags, "seq")).toBe("256,");
    expect(flagRequired(flags, "model")).toBe("m.onnx");
    expect(usageOf(() => flagRequired(flags, "data")).message).toBe("missing required flag --data");
    expect(flagBool(flags, "json")).toBe(false);
  });

  test("integers with bounds", () => {
    expect(flagInt(flags, "batch", { min: 1 })).toBe(16);
    expect(flagInt(flags, "absent", { min: 1 }, 7)).toBe(7);
    expect(flagInt(flags, "absent")).toBeUndefined();
    expect(usageOf(() => flagInt(flags, "batch", { max: 8 })).message).toBe(
      "--batch must be an integer <= 8, got 16",
    );
    for (const bad of ["abc", "1.5", "", "1e3", "99999999999999999999"]) {
      const f = parseArgs(specs, [`--batch=${bad}`]).flags;
      expect(usageOf(() => flagInt(f, "batch")).message).toContain("must be an integer");
    }
    const neg = parseArgs(specs, ["--batch", "0"]).flags;
    expect(usageOf(() => flagInt(neg, "batch", { min: 1 })).message).toContain(">= 1");
  });

  test("numbers", () => {
    const f = parseArgs(specs, ["--batch", "0.25"]).flags;
    expect(flagNumber(f, "batch", { min: 0, max: 1 })).toBe(0.25);
    const bad = parseArgs(specs, ["--batch", "NaN"]).flags;
    expect(usageOf(() => flagNumber(bad, "batch")).message).toContain("must be a number");
    const inf = parseArgs(specs, ["--batch", "Infinity"]).flags;
    expect(usageOf(() => flagNumber(inf, "batch")).message).toContain("must be a number");
  });

  test("lists split on commas across repeats", () => {
    expect(flagList(flags, "seq")).toEqual(["32", "128", "256"]);
    expect(flagList(flags, "absent", ["a"])).toEqual(["a"]);
    expect(flagIntList(flags, "seq", { min: 1, max: 512 })).toEqual([32, 128, 256]);
    expect(flagIntList(flags, "absent", {}, [128])).toEqual([128]);
    const bad = parseArgs(specs, ["--seq", "32,x"]).flags;
    expect(usageOf(() => flagIntList(bad, "seq")).message).toContain('got "x"');
    const empty = parseArgs(specs, ["--seq", ","]).flags;
    expect(usageOf(() => flagIntList(empty, "seq")).message).toContain("at least one value");
  });

  test("choices and positionals", () => {
    const f = parseArgs(specs, ["--model", "static"]).flags;
    expect(flagChoice(f, "model", ["static", "dynamic"] as const, "dynamic")).toBe("static");
    expect(flagChoice(f, "absent", ["static", "dynamic"] as const, "dynamic")).toBe("dynamic");
    const g = parseArgs(specs, ["--model", "other"]).flags;
    expect(usageOf(() => flagChoice(g, "model", ["static", "dynamic"], "static")).message).toContain(
      "one of static, dynamic",
    );
    expectNoPositionals([]);
    expect(usageOf(() => expectNoPositionals(["x"])).message).toBe('unexpected argument "x"');
  });
});

describe("help", () => {
  const cmd: Command = {
    name: "eval",
    summary: "evaluate a model",
    usage: "--model FILE [--json]",
    description: "First paragraph.\n\nSecond paragraph.",
    flags: specs,
    run: async () => 0,
  };

  test("command help shows usage, description, every flag, placeholders and defaults", () => {
    const text = renderCommandHelp(cmd);
    expect(text).toContain("Usage: quantd eval --model FILE [--json]");
    expect(text).toContain("First paragraph.\n\nSecond paragraph.");
    expect(text).toMatch(/-m, --model FILE\s+model file/);
    expect(text).toMatch(/--seq N,…\s+sequence lengths \(repeatable; default: 128\)/);
    expect(text).toMatch(/--batch N\s+batch size \(default: 32\)/);
    expect(text).toMatch(/--json\s+print JSON/);
    expect(text).toMatch(/-h, --help\s+show this help/);
  });

  test("main help lists commands", () => {
    const text = renderMainHelp([cmd], "9.9.9");
    expect(text).toContain("quantd 9.9.9");
    expect(text).toMatch(/eval\s+evaluate a model/);
    expect(text).toMatch(/help\s+show help for a command/);
  });

  test("wrap keeps lines within the width", () => {
    const lines = wrap("aa bb cc dd ee ff", 5);
    expect(lines).toEqual(["aa bb", "cc dd", "ee ff"]);
    expect(wrap("averyveryverylongword x", 4)).toEqual(["averyveryverylongword", "x"]);
  });
});

describe("errors from another process", () => {
  test("fromJSON renders an error as its sender would: code, message, details and each cause", () => {
    const sent = new QuantdError("MODEL_LOAD_FAILED", "onnxruntime could not load m.onnx", {
      details: { path: "m.onnx" },
      cause: new Error("Load model failed: unknown op NoSuchOp", { cause: new Error("line 3") }),
    });
    const received = QuantdError.fromJSON(JSON.parse(JSON.stringify(sent.toJSON())));
    expect(received.toLine()).toBe(sent.toLine());
    expect(received.toJSON()).toEqual(sent.toJSON());
    expect(received.toLine()).toBe(
      "error MODEL_LOAD_FAILED: onnxruntime could not load m.onnx (cause: Load model failed: unknown op NoSuchOp; line 3)",
    );
    expect(QuantdError.fromJSON({ code: "NOT_READY", message: "no model" }).toLine()).toBe(
      "error NOT_READY: no model",
    );
  });
});
