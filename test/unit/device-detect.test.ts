import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { chooseBoard, detectDevice, readFacts } from "../../src/device/detect.ts";
import { profileFor } from "../../src/device/profiles.ts";
import { isQuantdError } from "../../src/errors.ts";

const fixtures = join(import.meta.dir, "../fixtures/boards");
const at = (board: string, glibc: string | null = "2.36") =>
  detectDevice({ root: join(fixtures, board), glibc });

describe("board detection on recorded /proc files", () => {
  test("Raspberry Pi 4: Cortex-A72 without dot product tries dynamic first", () => {
    const { facts, profile } = at("rpi4");
    expect(facts.arch).toBe("arm64");
    expect(facts.cores).toBe(4);
    expect(facts.cpuParts).toEqual(["0xd08"]);
    expect(facts.features).not.toContain("asimddp");
    expect(profile.id).toBe("rpi4");
    expect(profile.threads).toBe(3);
    expect(profile.preferredFormats[0]).toBe("int8-dynamic");
  });

  test("Raspberry Pi 5: Cortex-A76 with asimddp tries static first", () => {
    const { facts, profile } = at("rpi5");
    expect(facts.features).toContain("asimddp");
    expect(profile.id).toBe("rpi5");
    expect(profile.preferredFormats[0]).toBe("int8-static");
  });

  test("Jetson Orin Nano: six cores, name from the device tree", () => {
    const { facts, profile } = at("jetson-orin-nano");
    expect(facts.cores).toBe(6);
    expect(profile.id).toBe("jetson-orin");
    expect(profile.name).toBe("NVIDIA Jetson Orin Nano");
    expect(profile.threads).toBe(5);
  });

  test("arm64 without a device tree is generic, and a small board gets a small pool", () => {
    const { facts, profile } = at("generic-arm64");
    expect(facts.model).toBeUndefined();
    expect(profile.id).toBe("generic-arm64");
    expect(profile.samplePool.maxRows).toBeLessThan(at("rpi5").profile.samplePool.maxRows);
  });

  test("x64 uses reduce_range only without VNNI", () => {
    const facts = readFacts({ root: join(fixtures, "generic-x64"), glibc: "2.36" });
    expect(chooseBoard(facts)).toBe("generic-x64");
    const withVnni = profileFor("generic-x64", { ...facts, features: ["avx2", "avx512_vnni"] });
    const withoutVnni = profileFor("generic-x64", { ...facts, features: ["avx2", "fma"] });
    expect(withVnni.reduceRange).toBe(false);
    expect(withoutVnni.reduceRange).toBe(true);
  });

  test("memory cap is a quarter of RAM within [384, 1024] MiB", () => {
    const facts = readFacts({ root: join(fixtures, "rpi4"), glibc: "2.36" });
    expect(profileFor("rpi4", { ...facts, memTotalMb: 1024 }).memoryMaxMb).toBe(384);
    expect(profileFor("rpi4", { ...facts, memTotalMb: 2048 }).memoryMaxMb).toBe(512);
    expect(profileFor("rpi4", { ...facts, memTotalMb: 8192 }).memoryMaxMb).toBe(1024);
  });
});

describe("unsupported targets fail early and clearly", () => {
  test("32-bit ARM", () => {
    let caught: unknown;
    try {
      at("rpi3-armv7");
    } catch (err) {
      caught = err;
    }
    expect(isQuantdError(caught, "DEVICE_UNSUPPORTED")).toBe(true);
    expect((caught as Error).message).toContain("32-bit ARM");
  });

  test("glibc older than 2.28 (JetPack 4 on the original Jetson Nano)", () => {
    expect(() => at("jetson-nano", "2.27")).toThrow(/glibc 2\.27 is older than 2\.28/);
    // The same board with a newer userland is a generic arm64 board.
    expect(at("jetson-nano", "2.31").profile.id).toBe("generic-arm64");
  });

  test("unknown glibc does not block detection", () => {
    expect(at("rpi5", null).profile.id).toBe("rpi5");
  });
});

describe("the running machine", () => {
  test("detects something sensible here", () => {
    const { facts, profile } = detectDevice();
    expect(facts.cores).toBeGreaterThan(0);
    expect(facts.memTotalMb).toBeGreaterThan(0);
    expect(profile.threads).toBeGreaterThanOrEqual(1);
  });
});
