/**
 * Dispatch and error rendering of `runCli`, with small commands defined here
 * (the real commands are exercised as processes in test/integration/cli*.test.ts).
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Command } from "../../src/cli/command.ts";
import { type CliIo, runCli, VERSION } from "../../src/cli/main.ts";
import { flagInt, flagRequired } from "../../src/cli/parse.ts";
import { QuantdError } from "../../src/errors.ts";

function capture(): { io: CliIo; out: () => string; err: () => string } {
  let out = "";
  let err = "";
  return {
    io: { stdout: (t) => (out += t), stderr: (t) => (err += t) },
    out: () => out,
    err: () => err,
  };
}

const echo: Command = {
  name: "echo",
  summary: "prints its arguments",
  usage: "[--times N] [--json] WORD…",
  flags: [
    { name: "times", type: "string", value: "N", description: "repeat", default: "1" },
    { name: "json", type: "boolean", description: "print JSON" },
  ],
  async run(ctx) {
    const times = flagInt(ctx.flags, "times", { min: 1, max: 3 }, 1);
    for (let i = 0; i < times; i++) ctx.out(ctx.positionals.join(" "));
    return 0;
  },
};

const failing: Command = {
  name: "fail",
  summary: "fails in the way asked",
  usage: "--how KIND",
  flags: [{ name: "how", type: "string", value: "KIND", description: "quantd, multiline, plain, string" }],
  async run(ctx) {
    const how = flagRequired(ctx.flags, "how");
    if (how === "quantd") {
      throw new QuantdError("MODEL_NOT_ONNX", "x.onnx is not an ONNX model", {
        cause: new Error("wire type 4"),
      });
    }
    if (how === "multiline") throw new QuantdError("DATA_MALFORMED", "first\n   second");
    if (how === "plain") throw new TypeError("cannot read properties of undefined");
    throw "a bare string";
  },
};

const commands = [echo, failing];
const saved = process.env["QUANTD_DEBUG"];
afterEach(() => {
  if (saved === undefined) delete process.env["QUANTD_DEBUG"];
  else process.env["QUANTD_DEBUG"] = saved;
});

describe("dispatch", () => {
  test("runs a command with its flags and positionals", async () => {
    const c = capture();
    expect(await runCli(["echo", "--times", "2", "a", "b"], { io: c.io, commands })).toBe(0);
    expect(c.out()).toBe("a b\na b\n");
    expect(c.err()).toBe("");
  });

  test("version, main help, command help", async () => {
    const v = capture();
    expect(await runCli(["--version"], { io: v.io, commands })).toBe(0);
    expect(v.out()).toBe(`quantd ${VERSION}\n`);
    const h = capture();
    expect(await runCli(["-h"], { io: h.io, commands })).toBe(0);
    expect(h.out()).toMatch(/echo\s+prints its arguments/);
    const ch = capture();
    expect(await runCli(["echo", "a", "--help"], { io: ch.io, commands })).toBe(0);
    expect(ch.out()).toMatch(/--times N\s+repeat \(default: 1\)/);
    expect(ch.err()).toBe("");
  });

  test("a flag before the command is a usage error", async () => {
    const c = capture();
    expect(await runCli(["--times", "2", "echo"], { io: c.io, commands })).toBe(2);
    expect(c.err()).toBe(
      "error USAGE: unknown flag --times (flags go after the command); see quantd --help\n",
    );
  });
});

describe("errors", () => {
  test("usage errors name the command's help and exit 2", async () => {
    const c = capture();
    expect(await runCli(["echo", "--times", "9"], { io: c.io, commands })).toBe(2);
    expect(c.err()).toBe("error USAGE: --times must be an integer <= 3, got 9; see quantd echo --help\n");
    expect(c.out()).toBe("");
  });

  test("a QuantdError is one line with its cause, exit 1", async () => {
    const c = capture();
    expect(await runCli(["fail", "--how", "quantd"], { io: c.io, commands })).toBe(1);
    expect(c.err()).toBe("error MODEL_NOT_ONNX: x.onnx is not an ONNX model (cause: wire type 4)\n");
  });

  test("a multi-line message still prints as one line", async () => {
    const c = capture();
    expect(await runCli(["fail", "--how", "multiline"], { io: c.io, commands })).toBe(1);
    expect(c.err()).toBe("error DATA_MALFORMED: first second\n");
  });

  test("anything else is INTERNAL, one line, no stack unless QUANTD_DEBUG=1", async () => {
    delete process.env["QUANTD_DEBUG"];
    const c = capture();
    expect(await runCli(["fail", "--how", "plain"], { io: c.io, commands })).toBe(1);
    expect(c.err()).toBe("error INTERNAL: TypeError: cannot read properties of undefined\n");
    const s = capture();
    expect(await runCli(["fail", "--how", "string"], { io: s.io, commands })).toBe(1);
    expect(s.err()).toBe("error INTERNAL: a bare string\n");

    process.env["QUANTD_DEBUG"] = "1";
    const d = capture();
    expect(await runCli(["fail", "--how", "plain"], { io: d.io, commands })).toBe(1);
    const lines = d.err().split("\n");
    expect(lines[0]).toStartWith("error INTERNAL: ");
    expect(d.err()).toMatch(/^ {4}at /m);
  });

  test("--json: errors as the toJSON object on stdout, only for commands that declare --json", async () => {
    const c = capture();
    expect(await runCli(["echo", "--json", "--times", "0"], { io: c.io, commands })).toBe(2);
    expect(c.err()).toBe("");
    const obj = JSON.parse(c.out()) as { code: string; message: string; details: { hint: string } };
    expect(obj.code).toBe("USAGE");
    expect(obj.message).toContain("--times must be an integer >= 1");
    expect(obj.details.hint).toBe("quantd echo --help");

    const f = capture();
    expect(await runCli(["fail", "--how", "quantd", "--json"], { io: f.io, commands })).toBe(2);
    expect(f.err()).toBe("error USAGE: unknown flag --json; see quantd fail --help\n");
  });
});
