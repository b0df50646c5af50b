/**
 * The agent's configuration: profile defaults, JSON and TOML files, QUANTD_*
 * overrides, flag precedence, and CONFIG_INVALID naming the key for every bad
 * value.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  envName,
  isLoopbackHost,
  type LoadConfigOptions,
  loadAgentConfig,
  parseTcp,
} from "../../src/agent/config.ts";
import { QuantdError } from "../../src/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base: LoadConfigOptions = {
  profile: { threads: 3, samplePool: { maxRows: 5000, maxBytes: 8 << 20 } },
  defaultModel: "/opt/quantd/models/sst2/model.onnx",
  env: { HOME: "/home/pi" },
};

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function configError(fn: () => unknown): QuantdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(QuantdError);
    expect((err as QuantdError).code).toBe("CONFIG_INVALID");
    return err as QuantdError;
  }
  throw new Error("expected CONFIG_INVALID");
}

describe("defaults", () => {
  test("from the board profile and the environment's directories", () => {
    const c = loadAgentConfig({
      ...base,
      env: { STATE_DIRECTORY: "/var/lib/quantd", RUNTIME_DIRECTORY: "/run/quantd" },
    });
    expect(c.stateDir).toBe("/var/lib/quantd");
    expect(c.socketPath).toBe("/run/quantd/quantd.sock");
    expect(c.threads).toBe(3);
    expect(c.samplePool).toEqual({ maxRows: 5000, maxBytes: 8 << 20 });
    expect(c.model).toBe("/opt/quantd/models/sst2/model.onnx");
    expect(c.modelExplicit).toBe(false);
    expect(c.tokenizerDir).toBe("/opt/quantd/models/sst2");
    expect(c.modelName).toBe("sst2");
    expect(c.tcp).toBeUndefined();
    expect(c.swap).toEqual({ errorRate: 0.01, p95Ratio: 1.2, window: 200 });
    expect(c.batching.maxBatch).toBeGreaterThan(1);
    expect(c.capture.enabled).toBe(false);
    expect(c.inferenceWorkers).toBe(1);
  });

  test("a model at the filesystem root is named after its file (no directory name to take)", () => {
    expect(loadAgentConfig({ ...base, flags: { model: "/model.onnx" } }).modelName).toBe("model");
    expect(loadAgentConfig({ ...base, flags: { model: "/nonexistent" } }).modelName).toBe("nonexistent");
    expect(loadAgentConfig({ ...base, flags: { model: "/my model (v2).onnx" } }).modelName).toBe(
      "my-model-v2-",
    );
  });

  test("socket in the state dir without RUNTIME_DIRECTORY", () => {
    const c = loadAgentConfig({ ...base, flags: { stateDir: "/data/q" } });
    expect(c.socketPath).toBe("/data/q/quantd.sock");
  });
});

describe("sources and precedence", () => {
  test("JSON file, relative paths resolved against the file", () => {
    const p = file(
      "agent.json",
      JSON.stringify({
        stateDir: "state",
        batching: { maxBatch: 4, maxDelayMs: 2 },
        swap: { p95Ratio: 1.5 },
      }),
    );
    const c = loadAgentConfig({ ...base, flags: { config: p } });
    expect(c.stateDir).toBe(join(dir, "state"));
    expect(c.batching).toMatchObject({ maxBatch: 4, maxDelayMs: 2 });
    expect(c.swap.p95Ratio).toBe(1.5);
  });

  test("TOML file", () => {
    const p = file(
      "agent.toml",
      'socketPath = "/tmp/q.sock"\ntcp = "127.0.0.1:8080"\n[limits]\nmaxTexts = 8\n[capture]\nenabled = true\nrate = 0.5\n',
    );
    const c = loadAgentConfig({ ...base, flags: { config: p } });
    expect(c.socketPath).toBe("/tmp/q.sock");
    expect(c.tcp).toEqual({ host: "127.0.0.1", port: 8080 });
    expect(c.limits.maxTexts).toBe(8);
    expect(c.capture).toEqual({ enabled: true, rate: 0.5 });
  });

  test("job runner: timeout, and a recalibration schedule only when asked for", () => {
    const plain = loadAgentConfig(base);
    expect(plain.jobs).toEqual({
      timeoutMs: 3_600_000,
      recalibrateEveryMs: undefined,
      recalibrateAfterSamples: undefined,
      recalibrateOnDrift: undefined,
    });
    const p = file(
      "jobs.toml",
      "[jobs]\ntimeoutMinutes = 30\nrecalibrateEveryHours = 24\nrecalibrateAfterSamples = 500\nrecalibrateOnDrift = 0.05\n",
    );
    const c = loadAgentConfig({ ...base, flags: { config: p } });
    expect(c.jobs).toEqual({
      timeoutMs: 1_800_000,
      recalibrateEveryMs: 86_400_000,
      recalibrateAfterSamples: 500,
      recalibrateOnDrift: 0.05,
    });
    expect(
      configError(() => loadAgentConfig({ ...base, env: { QUANTD_JOBS_RECALIBRATE_ON_DRIFT: "1.5" } }))
        .message,
    ).toContain("jobs.recalibrateOnDrift");
    const err = configError(() =>
      loadAgentConfig({ ...base, env: { QUANTD_JOBS_RECALIBRATE_AFTER_SAMPLES: "0" } }),
    );
    expect(err.message).toContain("jobs.recalibrateAfterSamples");
  });

  test("quantize.prefer: latency by default, size when asked, anything else refused naming the key", () => {
    expect(loadAgentConfig(base).quantize).toEqual({ prefer: "latency" });
    const p = file("prefer.toml", '[quantize]\nprefer = "size"\n');
    expect(loadAgentConfig({ ...base, flags: { config: p } }).quantize).toEqual({ prefer: "size" });
    expect(loadAgentConfig({ ...base, env: { QUANTD_QUANTIZE_PREFER: "size" } }).quantize.prefer).toBe(
      "size",
    );
    const err = configError(() => loadAgentConfig({ ...base, env: { QUANTD_QUANTIZE_PREFER: "speed" } }));
    expect(err.message).toContain("quantize.prefer");
    expect(err.message).toContain("latency, size");
  });

  test("environment over file, flags over environment", () => {
    const p = file(
      "prec.json",
      JSON.stringify({ threads: 1, stateDir: "/from/file", batching: { maxBatch: 2 } }),
    );
    const c = loadAgentConfig({
      ...base,
      env: {
        QUANTD_THREADS: "2",
        QUANTD_STATE_DIR: "/from/env",
        QUANTD_CAPTURE_ENABLED: "yes",
        QUANTD_INFERENCE_WORKERS: "2",
      },
      flags: { config: p, stateDir: "/from/flag", model: "m/model.onnx" },
    });
    expect(c.threads).toBe(2);
    expect(c.stateDir).toBe("/from/flag");
    expect(c.batching.maxBatch).toBe(2);
    expect(c.capture.enabled).toBe(true);
    expect(c.inferenceWorkers).toBe(2);
    expect(c.modelExplicit).toBe(true);
    expect(c.model).toBe(join(process.cwd(), "m/model.onnx"));
  });

  test("QUANTD_CONFIG names the file when --config is absent", () => {
    const p = file("env.json", JSON.stringify({ modelName: "reviews" }));
    expect(loadAgentConfig({ ...base, env: { QUANTD_CONFIG: p } }).modelName).toBe("reviews");
  });

  test("environment names", () => {
    expect(envName("batching.maxBatch")).toBe("QUANTD_BATCHING_MAX_BATCH");
    expect(envName("swap.p95Ratio")).toBe("QUANTD_SWAP_P95_RATIO");
    expect(envName("stateDir")).toBe("QUANTD_STATE_DIR");
  });
});

describe("CONFIG_INVALID names the key", () => {
  const cases: [string, Partial<LoadConfigOptions>, string][] = [
    ["negative batch", { env: { QUANTD_BATCHING_MAX_BATCH: "-1" } }, "batching.maxBatch"],
    ["non-numeric threads", { env: { QUANTD_THREADS: "many" } }, "threads"],
    ["fractional queue", { env: { QUANTD_BATCHING_MAX_QUEUE: "2.5" } }, "batching.maxQueue"],
    ["capture rate 0", { env: { QUANTD_CAPTURE_RATE: "0" } }, "capture.rate"],
    ["bad boolean", { env: { QUANTD_CAPTURE_ENABLED: "perhaps" } }, "capture.enabled"],
    [
      "queue below batch",
      { env: { QUANTD_BATCHING_MAX_BATCH: "64", QUANTD_BATCHING_MAX_QUEUE: "8" } },
      "batching.maxQueue",
    ],
    ["non-loopback tcp", { flags: { tcp: "0.0.0.0:8080" } }, "tcp"],
    ["malformed tcp", { env: { QUANTD_TCP: "8080" } }, "tcp"],
    ["socket path too long", { flags: { socket: `/tmp/${"s".repeat(120)}.sock` } }, "socketPath"],
  ];
  for (const [name, opts, key] of cases) {
    test(name, () => {
      const err = configError(() => loadAgentConfig({ ...base, ...opts }));
      expect(err.details?.["key"]).toBe(key);
      expect(err.message).toContain(key);
    });
  }

  test("a string where a number belongs in a file", () => {
    const p = file("str.json", JSON.stringify({ limits: { maxBodyBytes: "1MB" } }));
    const err = configError(() => loadAgentConfig({ ...base, flags: { config: p } }));
    expect(err.message).toContain("limits.maxBodyBytes");
    expect(err.message).toContain(p);
  });

  test("unknown keys and sections", () => {
    expect(
      configError(() => loadAgentConfig({ ...base, flags: { config: file("u1.json", '{"treads": 2}') } }))
        .message,
    ).toContain("treads");
    expect(
      configError(() =>
        loadAgentConfig({ ...base, flags: { config: file("u2.json", '{"batching": {"size": 2}}') } }),
      ).message,
    ).toContain("batching.size");
  });

  test("unparsable and missing files", () => {
    expect(
      configError(() => loadAgentConfig({ ...base, flags: { config: file("bad.toml", "threads = = 2") } }))
        .message,
    ).toContain("not valid TOML");
    expect(
      configError(() => loadAgentConfig({ ...base, flags: { config: file("bad.json", "{") } })).message,
    ).toContain("not valid JSON");
    configError(() => loadAgentConfig({ ...base, flags: { config: join(dir, "absent.json") } }));
  });
});

describe("loopback", () => {
  test("loopback hosts", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1"]) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ["0.0.0.0", "192.168.1.2", "::", "example.com", "127.0.0.256"])
      expect(isLoopbackHost(h)).toBe(false);
  });

  test("parseTcp accepts IPv6 brackets and objects", () => {
    expect(parseTcp("[::1]:9000")).toEqual({ host: "::1", port: 9000 });
    expect(parseTcp({ host: "localhost", port: 1 })).toEqual({ host: "localhost", port: 1 });
    configError(() => parseTcp("127.0.0.1:70000"));
  });
});
