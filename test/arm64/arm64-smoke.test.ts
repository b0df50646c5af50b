/**
 * The arm64 release executable runs: built for real, run under qemu-user as a
 * Raspberry Pi 5 (Cortex-A76, its recorded /proc), it detects the board and
 * classifies with the shipped model through the arm64 onnxruntime in its lib/,
 * giving the x86 probabilities. Part of `bun test` (about a minute); skipped
 * with the reason when qemu or the arm64 libraries are not installed
 * (`test/arm64/ensure-packages.sh` installs them). The full comparison,
 * quantization included, is `bun run test:arm64`.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { makeSysroot, missingPrerequisites, qemuArgv } from "./emulator.ts";
import { buildRelease } from "../../scripts/build.ts";
import { expectClose } from "../helpers/expect-close.ts";

const REPO = resolve(import.meta.dir, "../..");
const missing = missingPrerequisites();
if (missing.length > 0) console.warn(`arm64 smoke test skipped; missing: ${missing.join("; ")}`);
const work = mkdtempSync(join(tmpdir(), "quantd-arm64-smoke-"));
let exe = "";
let sysroot = "";
const texts = ["a fine film", "a dull, lifeless and tedious mess"];

interface ClassifyJson {
  results: { label: string; probabilities: number[] }[];
}

async function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(argv, { cwd: "/", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { code, stdout, stderr };
}

beforeAll(async () => {
  if (missing.length > 0) return;
  exe = (await buildRelease({ target: "linux-arm64", outDir: join(work, "dist"), tarball: false }))
    .executable;
  sysroot = makeSysroot("rpi5", join(work, "sysroot"));
}, 300_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe.skipIf(missing.length > 0)("arm64 release executable under qemu (cortex-a76)", () => {
  test("detects the Raspberry Pi 5 from the emulated /proc", async () => {
    const r = await run(qemuArgv({ cpu: "cortex-a76", sysroot, argv: [exe, "device", "--json"] }));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const d = JSON.parse(r.stdout) as { facts: { arch: string }; profile: { id: string } };
    expect(d.facts.arch).toBe("arm64");
    expect(d.profile.id).toBe("rpi5");
  }, 300_000);

  test("classifies with the shipped model like x86", async () => {
    const r = await run(
      qemuArgv({ cpu: "cortex-a76", sysroot, argv: [exe, "classify", "--json", ...texts] }),
    );
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const arm = JSON.parse(r.stdout) as ClassifyJson;
    const host = await run([process.execPath, join(REPO, "src/cli/main.ts"), "classify", "--json", ...texts]);
    expect(host.code).toBe(0);
    const x86 = JSON.parse(host.stdout) as ClassifyJson;
    expect(arm.results.map((x) => x.label)).toEqual(["positive", "negative"]);
    arm.results.forEach((x, i) => {
      expectClose(x.probabilities, x86.results[i]!.probabilities, { atol: 1e-5, what: texts[i] });
    });
  }, 300_000);
});
