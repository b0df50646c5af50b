/**
 * The fleet wire protocol without a broker: topic names, command validation
 * (allow-lists, ranges, never paths), envelopes, and the link's config.
 */
import { parseRecalibrateParams } from "../../src/agent/recalibrate-params.ts";
import { describe, expect, test } from "bun:test";
import { resolveFleetConfig } from "../../src/fleet/device/config.ts";
import { generateSigningKey } from "../../src/fleet/signing.ts";
import {
  COMMAND_NAMES,
  CONTROLLER_SHARED_FILTER,
  decodeJson,
  deviceTopics,
  encodeReport,
  MAX_COMMAND_BYTES,
  MAX_REPORT_BYTES,
  MAX_TELEMETRY_SAMPLES,
  parseCommand,
  parseEnvelope,
  parseTopic,
  deviceNameOf,
  NAME_PATTERN,
} from "../../src/fleet/protocol.ts";
import { repoRoot } from "../helpers/paths.ts";

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return (err as { code: string }).code;
  }
  return "no error";
};

describe("topics", () => {
  test("every topic of a device sits under quantd/v1/{fleet}/{device}/ and parses back", () => {
    const t = deviceTopics("lab", "pi-4.a_1");
    expect(t.status).toBe("quantd/v1/lab/pi-4.a_1/status");
    expect(parseTopic(t.status)).toEqual({ kind: "status", fleet: "lab", device: "pi-4.a_1" });
    expect(parseTopic(t.telemetry)?.kind).toBe("telemetry");
    expect(parseTopic(t.report)?.kind).toBe("report");
    expect(parseTopic(t.job("j-1"))).toEqual({ kind: "job", fleet: "lab", device: "pi-4.a_1", jobId: "j-1" });
    expect(parseTopic(t.cmd("set-config"))).toMatchObject({ kind: "cmd", name: "set-config" });
    expect(parseTopic(t.reply("cli-1"))).toMatchObject({ kind: "reply", requester: "cli-1" });
    expect(t.cmdFilter).toBe("quantd/v1/lab/pi-4.a_1/cmd/+");
    expect(CONTROLLER_SHARED_FILTER).toBe("$share/quantd-controllers/quantd/v1/+/+/#");
  });

  test("names that would break the topic tree or collide with wildcards are refused", () => {
    for (const bad of ["", "a/b", "+", "#", "_ctl", "-x", "a b", "x".repeat(65)]) {
      expect(code(() => deviceTopics("lab", bad))).toBe("CONFIG_INVALID");
    }
    expect(parseTopic("quantd/v2/lab/d/status")).toBeUndefined();
    expect(parseTopic("quantd/v1/lab/d/status/extra/more")).toBeUndefined();
    expect(parseTopic("quantd/v1/lab/d/whatever")).toBeUndefined();
  });
});

describe("commands", () => {
  test("every command name parses with empty or valid params", () => {
    for (const name of COMMAND_NAMES) {
      const params =
        name === "collect"
          ? { action: "start" }
          : name === "set-config"
            ? { "capture.enabled": true }
            : name === "release"
              ? { release: "a".repeat(64), url: "http://127.0.0.1:8080/" }
              : {};
      expect(parseCommand(name, params).name).toBe(name);
    }
  });

  test("release needs a release id and the controller's http(s) address; nothing else is taken", () => {
    const ok = { release: "0f".repeat(32), url: "https://controller.example/" };
    expect(parseCommand("release", { ...ok, samples: 64, gate: { minAgreement: 0.99 } })).toEqual({
      name: "release",
      params: { ...ok, samples: 64, gate: { minAgreement: 0.99 } },
    });
    expect(code(() => parseCommand("release", { url: ok.url }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("release", { ...ok, release: "../../etc" }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("release", { ...ok, url: "file:///etc/passwd" }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("release", { ...ok, url: `http://x/${"a".repeat(3000)}` }))).toBe(
      "COMMAND_INVALID",
    );
    expect(code(() => parseCommand("release", { ...ok, path: "/tmp/model.onnx" }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("release", { ...ok, maxLatencyRatio: -1 }))).toBe("COMMAND_INVALID");
  });

  test("recalibrate checks samples, method and gate", () => {
    expect(
      parseCommand("recalibrate", { samples: 256, method: "entropy", gate: { minAgreement: 0.98 } }),
    ).toEqual({
      name: "recalibrate",
      params: { samples: 256, method: "entropy", gate: { minAgreement: 0.98 } },
    });
    expect(code(() => parseCommand("recalibrate", { samples: 0 }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { samples: 1.5 }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { method: "kl" }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { gate: { minAgreement: 2 } }))).toBe("COMMAND_INVALID");
    // How the gate decides travels with it: the lower bound (default) or, explicitly, the point estimate.
    expect(
      parseCommand("recalibrate", { gate: { minAgreement: 0.99, decideOn: "point", confidence: 0.9 } })
        .params,
    ).toEqual({ gate: { minAgreement: 0.99, decideOn: "point", confidence: 0.9 } });
    expect(
      parseRecalibrateParams({ gate: { minAgreement: 0.99, decideOn: "point", confidence: 0.9 } }),
    ).toEqual({ gate: { minAgreement: 0.99 }, decideOn: "point", confidence: 0.9 });
    expect(code(() => parseCommand("recalibrate", { gate: { decideOn: "luck" } }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { gate: { other: 1 } }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { model: "/tmp/x.onnx" }))).toBe("COMMAND_INVALID");
  });

  test("recalibrate carries the int8 form (auto: every form fast on the board, timed there) and the size preference", () => {
    const cmd = parseCommand("recalibrate", { mode: "auto", prefer: "size" });
    expect(cmd).toEqual({ name: "recalibrate", params: { mode: "auto", prefer: "size" } });
    // The job the device queues reads them as `quantd job recalibrate --mode auto --prefer size` sets them.
    expect(parseRecalibrateParams(cmd.params as Record<string, unknown>)).toEqual({
      mode: "auto",
      prefer: "size",
    });
    expect(code(() => parseCommand("recalibrate", { mode: "fastest" }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("recalibrate", { prefer: "speed" }))).toBe("COMMAND_INVALID");
    // The job's own check reads the same lists (quant/methods.ts) as the protocol's.
    expect(() => parseRecalibrateParams({ mode: "fastest" })).toThrow(
      'mode must be one of static, dynamic, auto, got "fastest"',
    );
    expect(() => parseRecalibrateParams({ prefer: "speed" })).toThrow(
      'prefer must be one of latency, size, got "speed"',
    );
  });

  test("the protocol and the job parameters' checks load without the quantizer (no onnxruntime in a controller)", () => {
    // In a process of its own: this one has loaded onnxruntime for other files' tests.
    const probe = [
      'await import("./src/fleet/protocol.ts");',
      'await import("./src/agent/recalibrate-params.ts");',
      'console.log(Object.keys(require.cache).filter((k) => k.includes("onnxruntime")).length);',
    ].join(" ");
    const r = Bun.spawnSync(["bun", "-e", probe], { cwd: repoRoot });
    expect(r.stderr.toString()).toBe("");
    expect(r.stdout.toString().trim()).toBe("0");
  });

  test("set-config accepts only allow-listed keys with typed values, never paths", () => {
    expect(parseCommand("set-config", { "capture.rate": 0.5, "batching.maxBatch": 16 })).toEqual({
      name: "set-config",
      params: { "capture.rate": 0.5, "batching.maxBatch": 16 },
    });
    for (const bad of [
      { model: "/etc/passwd" },
      { stateDir: "/" },
      { socketPath: "/tmp/s" },
      { "capture.rate": 2 },
      { "capture.enabled": "yes" },
      { "batching.maxBatch": -1 },
      {},
    ]) {
      expect(code(() => parseCommand("set-config", bad))).toBe("COMMAND_INVALID");
    }
  });

  test("collect needs start or stop; unknown commands and non-object params are refused", () => {
    expect(parseCommand("collect", { action: "stop" })).toEqual({
      name: "collect",
      params: { action: "stop" },
    });
    expect(code(() => parseCommand("collect", {}))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("reboot", {}))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("status", [1]))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("status", { x: 1 }))).toBe("COMMAND_INVALID");
    expect(code(() => parseCommand("rollback", { version: "../../etc" }))).toBe("COMMAND_INVALID");
  });

  test("envelopes need an id; expiresAt must be a number; nothing else is accepted", () => {
    expect(parseEnvelope(bytes('{"id":"c-1","expiresAt":5,"params":{"a":1}}'))).toEqual({
      id: "c-1",
      expiresAt: 5,
      params: { a: 1 },
    });
    for (const bad of [
      "not json",
      "[]",
      "{}",
      '{"id":""}',
      '{"id":"a/b"}',
      '{"id":"x","expiresAt":"soon"}',
      '{"id":"x","params":[]}',
      '{"id":"x","extra":1}',
    ]) {
      expect(code(() => parseEnvelope(bytes(bad)))).toBe("COMMAND_INVALID");
    }
    expect(code(() => parseEnvelope(new Uint8Array([0xff, 0xfe])))).toBe("COMMAND_INVALID");
  });
});

describe("link config", () => {
  test("defaults: persistent session outliving the will delay, device id as client id", () => {
    const c = resolveFleetConfig({ broker: "mqtt://127.0.0.1:1883", fleet: "lab", device: "pi-1" });
    expect(c.connect).toMatchObject({
      clientId: "pi-1",
      clean: false,
      keepaliveSec: 30,
      sessionExpirySec: 3600,
    });
    expect(c.willDelaySec).toBe(15);
    const long = resolveFleetConfig({
      broker: "mqtt://h",
      fleet: "lab",
      device: "pi-1",
      willDelaySec: 7200,
      sessionExpirySec: 60,
    });
    expect(long.connect.sessionExpirySec).toBe(7200);
  });

  test("bad URLs, names, numbers and certificate setups are CONFIG_INVALID", () => {
    const base = { broker: "mqtt://h", fleet: "lab", device: "pi-1" };
    expect(code(() => resolveFleetConfig({ ...base, broker: "http://h" }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, broker: "nonsense" }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, device: "a/b" }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, keepaliveSec: 0 }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, certFile: "/x.pem" }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, caFile: "/nonexistent.pem" }))).toBe("CONFIG_INVALID");
    expect(
      code(() => resolveFleetConfig({ ...base, broker: "mqtts://h", caFile: "/nonexistent/ca.pem" })),
    ).toBe("CONFIG_INVALID");
  });

  test("operator keys must be Ed25519 public keys; caps on telemetry batch and packet size", () => {
    const base = { broker: "mqtt://h", fleet: "lab", device: "pi-1" };
    expect(code(() => resolveFleetConfig({ ...base, operatorKeys: ["not-a-key"] }))).toBe("CONFIG_INVALID");
    expect(code(() => resolveFleetConfig({ ...base, telemetryBatch: MAX_TELEMETRY_SAMPLES + 1 }))).toBe(
      "CONFIG_INVALID",
    );
    expect(code(() => resolveFleetConfig({ ...base, maxPacketBytes: 1000 }))).toBe("CONFIG_INVALID");
    const key = generateSigningKey().key.publicKey;
    expect(resolveFleetConfig({ ...base, operatorKeys: [` ${key} `] }).operatorKeys).toEqual([key]);
    expect(resolveFleetConfig(base).connect.maxPacketBytes).toBe(2 * MAX_COMMAND_BYTES);
  });
});

describe("reports within the cap", () => {
  test("a result too large to send is replaced by its size; id, state and error stay", () => {
    const report = {
      id: "j-1",
      device: "pi-1",
      jobId: "j-1",
      type: "recalibrate",
      state: "FAILED" as const,
      result: { blob: "x".repeat(MAX_REPORT_BYTES) },
      error: { code: "INTERNAL" as const, message: "m".repeat(10_000) },
      startedAt: 1,
      finishedAt: 2,
    };
    const body = encodeReport(report);
    expect(body.byteLength).toBeLessThanOrEqual(MAX_REPORT_BYTES);
    const back = decodeJson(body) as typeof report & { result: { truncated: boolean; resultBytes: number } };
    expect(back).toMatchObject({ id: "j-1", state: "FAILED", error: { code: "INTERNAL" } });
    expect(back.result.truncated).toBe(true);
    expect(back.result.resultBytes).toBeGreaterThan(MAX_REPORT_BYTES);
    expect(back.error.message.length).toBe(4096);
    const small = { ...report, result: { ok: true }, error: null };
    expect(decodeJson(encodeReport(small))).toEqual(small);
  });

  test("a host name becomes a device name by one rule: a valid topic level, whatever the host is called", () => {
    const cases: [string, string][] = [
      ["pi-4", "pi-4"],
      ["pi 4 (lab)", "pi-4--lab-"],
      ["-hidden.local", "hidden.local"],
      ["..__", "device"],
      ["", "device"],
      ["é-board", "board"],
      ["x".repeat(70), "x".repeat(64)],
    ];
    for (const [host, name] of cases) {
      expect({ host, name: deviceNameOf(host) }).toEqual({ host, name });
      expect(NAME_PATTERN.test(deviceNameOf(host))).toBe(true);
    }
  });
});
