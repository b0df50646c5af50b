/**
 * `quantd demo` end to end, as a user runs it from another directory: the
 * fp32 steps, then the fleet loop — the embedded MQTT broker, the agent on a
 * temporary socket joined to the fleet, the controller seeing it online, a
 * recalibration sent over MQTT that promotes int8 and whose report reaches the
 * controller's store exactly once — then classification through the socket by
 * int8 and the int8/fp32 comparison, asserted on the printed lines and on
 * `--json`. The human run uses the embedded broker; the `--json --stay` run
 * uses `--broker` with a real mosquitto when there is one (the embedded broker
 * otherwise). Both go in parallel to keep the test's wall time near one demo's.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasMosquitto, type Mosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { type CliRun, cliMain, envWithoutQuantd, runCommand } from "../helpers/run-cli.ts";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the demo; with `whileStaying`, the run has `--stay`: once stderr says it
 * stays, `whileStaying` gets stderr so far, then the demo is sent SIGINT.
 */
async function demo(
  args: string[],
  cwd: string,
  whileStaying?: (stderr: string) => Promise<void>,
): Promise<Run> {
  const p = Bun.spawn(["bun", cliMain, "demo", ...args], {
    cwd,
    // The demo must not depend on the caller's QUANTD_* settings.
    env: envWithoutQuantd(),
    stdout: "pipe",
    stderr: "pipe",
  });
  let stderr = "";
  const readErr = (async () => {
    const decoder = new TextDecoder();
    let staying = false;
    for await (const chunk of p.stderr) {
      stderr += decoder.decode(chunk, { stream: true });
      if (whileStaying !== undefined && !staying && stderr.includes("Ctrl-C")) {
        staying = true;
        // A failed check must still stop the demo, or the test hangs until its timeout.
        void whileStaying(stderr).finally(() => p.kill("SIGINT"));
      }
    }
  })();
  const [stdout, code] = await Promise.all([new Response(p.stdout).text(), p.exited, readErr]);
  return { code, stdout, stderr };
}

function percent(text: string, re: RegExp): number {
  const m = re.exec(text);
  if (m === null) throw new Error(`no match for ${re} in:\n${text}`);
  return Number(m[1]) / 100;
}

const STEPS = [
  "load",
  "classify",
  "evaluate",
  "broker",
  "agent",
  "seed",
  "controller",
  "recalibrate",
  "serve",
  "compare",
];

describe("quantd demo", () => {
  test("runs the fleet loop: broker, agent, controller, recalibration over MQTT, the device's report, int8 over the socket", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "quantd-demo-cwd-"));
    let dashboard: {
      device: string;
      online: boolean;
      model: { kind: string; version: string };
      lastReport: { state: string } | null;
      figures: { int8P50Ms?: number; fp32P50Ms?: number; agreement?: number; modelVersion?: string };
    }[] = [];
    let mosquitto: Mosquitto | undefined;
    let curled: CliRun = { code: -1, stdout: "", stderr: "not run" };
    try {
      mosquitto = hasMosquitto ? await startMosquitto() : undefined;
      const brokerArgs = mosquitto === undefined ? [] : ["--broker", mosquitto.url];
      const [human, json] = await Promise.all([
        demo(["--limit", "48"], cwd),
        demo(["--json", "--limit", "32", "--stay", ...brokerArgs], cwd, async (err) => {
          // --stay: the controller's dashboard serves the device with its report until SIGINT.
          const url = /dashboard (http:\/\/127\.0\.0\.1:\d+\/)/.exec(err)?.[1];
          // The curl example works as printed, pasted into a shell.
          const curl = /^ {2}socket: {2}(curl .*)$/m.exec(err)?.[1] ?? "false";
          curled = await runCommand(["bash", "-c", curl]);
          try {
            const res = await fetch(`${url}api/devices?fleet=demo`);
            dashboard = (await res.json()) as typeof dashboard;
          } catch (e) {
            dashboard = [];
            console.error(`dashboard not reached: ${e}`);
          }
        }),
      ]);

      expect(human.stderr).not.toContain("error");
      expect(human.code).toBe(0);
      const out = human.stdout;
      for (const [i, step] of STEPS.entries()) expect(out).toContain(`[${i + 1}/${STEPS.length}] ${step}`);
      // The fleet loop, as printed while it runs.
      expect(out).toMatch(/embedded MQTT 5 broker \(aedes, .*\) on mqtt:\/\/127\.0\.0\.1:\d+/);
      expect(out).toMatch(
        /fleet link: device demo-device of fleet demo, connected to mqtt:\/\/127\.0\.0\.1:\d+/,
      );
      expect(out).toMatch(
        /demo-device: online \(retained status\), agent \d+\.\d+\.\d+, fp32 model version 1/,
      );
      expect(out).toContain(
        "command recalibrate → demo-device on quantd/v1/demo/demo-device/cmd/recalibrate",
      );
      expect(out).toMatch(/ QUEUED\n/);
      expect(out).toMatch(/ IN_PROGRESS calibrate\n/);
      expect(out).toMatch(/ SUCCEEDED\n/);
      // The device's report, from the controller's store: received once.
      const report = out.slice(out.indexOf("demo-device's report as the controller stored it"));
      expect(report).toMatch(
        /^demo-device's report as the controller stored it \(1 report, 0 duplicates received\):/,
      );
      expect(report).toMatch(/serving\s+int8-static model version 2 \(retained status\)/);
      expect(report).toMatch(/size\s+fp32 28\.9 MB → int8-static [\d.]+ MB \([3-4]\.\d× smaller\)/);
      expect(report).toMatch(
        /latency p50\s+fp32 [\d.]+ ms → int8-static [\d.]+ ms \(median paired ratio [\d.]+;/,
      );
      expect(report).toMatch(/peak RSS\s+fp32 [\d.]+ MB → int8-static [\d.]+ MB/);
      expect(report).toMatch(
        /agreement\s+int8 = fp32 on [\d.]+ % \(≥ [\d.]+ % at 95 %, n = [\d,]+(?: of 2,752)?\), gate 99\.5 % on the bound/,
      );
      expect(report).toMatch(/accuracy\s+fp32 [\d.]+% → int8 [\d.]+% \(held-out labels\)/);
      expect(out).toMatch(/answered by int8-static model version 2 over \S+quantd\.sock/);
      const summary = out.slice(out.indexOf("\nSummary"));
      expect(summary).toMatch(/accuracy\s+\d+\.\d\d% on 48 SST-2 dev sentences \(fp32\)/);
      expect(summary).toMatch(
        /fleet\s+demo-device online at the controller via the embedded broker, serving int8-static version 2/,
      );
      expect(summary).toMatch(
        /recalibration\s+SUCCEEDED in [\d.]+ s over MQTT: 128 calibration \+ 2752 held-out store samples, int8-static promoted as version 2/,
      );
      expect(summary).toMatch(/stages\s+pick .*, quantize .*, benchmark .*, promote .*, report /);
      expect(
        percent(
          summary,
          /held-out gate\s+int8 = fp32 on [\d.]+ % \(≥ ([\d.]+) % at 95 %, n = [\d,]+(?: of 2,752)?\), gate 99\.5 %/,
        ),
      ).toBeGreaterThanOrEqual(0.995);
      expect(summary).toMatch(/size\s+fp32 28\.9 MB → int8 [\d.]+ MB \([3-4]\.\d× smaller\)/);
      const fp32Acc = percent(summary, /dev accuracy\s+fp32 ([\d.]+)% → int8 [\d.]+% on 48 sentences/);
      const int8Acc = percent(summary, /dev accuracy\s+fp32 [\d.]+% → int8 ([\d.]+)% on 48 sentences/);
      expect(Math.abs(fp32Acc - int8Acc)).toBeLessThanOrEqual(2 / 48);
      // With its bound, as every agreement quantd prints.
      expect(
        percent(summary, /dev agreement\s+int8 = fp32 on ([\d.]+) % \(≥ [\d.]+ % at 95 %, n = 48\)/),
      ).toBeGreaterThanOrEqual(0.95);
      expect(out).toMatch(
        /agreement: int8 picks the fp32 class on [\d.]+ % \(≥ [\d.]+ % at 95 %, n = 48\) of them \(\d+ differ\)/,
      );
      expect(summary).toMatch(/dev latency\s+p50 fp32 [\d.]+ ms → int8 [\d.]+ ms \([\d.]+× faster\)/);
      expect(summary).toMatch(/socket\s+5 sentences served by int8-static version 2, [45]\/5 labels as fp32/);
      // The temporary state directory and socket are gone.
      const dir = /state directory (\S+): SQLite store/.exec(out)?.[1];
      expect(dir).toBeDefined();
      expect(existsSync(dir!)).toBe(false);

      expect(json.code).toBe(0);
      expect(json.stderr).toContain("still running (--stay): dashboard http://127.0.0.1:");
      expect(curled.code).toBe(0); // (curl draws its progress meter on stderr when not on a terminal)
      expect(JSON.parse(curled.stdout)).toMatchObject({ model: { kind: "int8-static", version: 2 } });
      expect(dashboard).toHaveLength(1);
      expect(dashboard[0]).toMatchObject({
        device: "demo-device",
        online: true,
        model: { kind: "int8-static", version: "2" },
        lastReport: { state: "SUCCEEDED" },
        figures: { modelVersion: "2" },
      });
      expect(dashboard[0]!.figures.int8P50Ms).toBeGreaterThan(0);
      expect(dashboard[0]!.figures.fp32P50Ms).toBeGreaterThan(0);
      expect(dashboard[0]!.figures.agreement).toBeGreaterThanOrEqual(0.995);
      const j = JSON.parse(json.stdout) as {
        steps: string[];
        classify: { label: string }[];
        evaluate: { n: number; accuracy: number; latencyMsP50: number; throughputPerSec: number };
        broker: { url: string; embedded: boolean };
        agent: { fleet: string; device: string };
        controller: {
          dashboard: string;
          device: { online: boolean; model: { kind: string; version: string } };
        };
        recalibrate: {
          via: string;
          state: string;
          stored: boolean;
          reports: number;
          duplicateReports: number;
          device: { online: boolean; model: { kind: string; version: string } };
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
      expect(j.steps).toEqual(STEPS);
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
      expect(j.broker).toEqual(
        mosquitto === undefined
          ? { embedded: true, url: expect.stringMatching(/^mqtt:\/\/127\.0\.0\.1:\d+$/) }
          : { embedded: false, url: mosquitto.url },
      );
      expect(j.agent).toMatchObject({ fleet: "demo", device: "demo-device" });
      expect(j.controller.dashboard).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      expect(j.controller.device).toMatchObject({ online: true, model: { kind: "fp32", version: "1" } });
      expect(j.recalibrate).toMatchObject({
        via: "mqtt",
        state: "SUCCEEDED",
        stored: true,
        reports: 1,
        duplicateReports: 0,
        device: { online: true, model: { kind: "int8-static", version: "2" } },
      });
      expect(j.recalibrate.result.decision).toBe("promoted");
      expect(j.recalibrate.result.candidate).toMatchObject({ kind: "int8-static", version: 2 });
      expect(j.serve).toMatchObject({ version: 2, kind: "int8-static" });
      expect(j.serve.results).toHaveLength(5);
      expect(j.compare.n).toBe(32);
      expect(j.compare.int8.bytes).toBeLessThan(0.3 * j.compare.fp32.bytes);
      expect(j.compare.agreement).toBeGreaterThanOrEqual(0.9);
    } finally {
      await mosquitto?.dispose();
      rmSync(cwd, { recursive: true, force: true });
    }
  }, 240_000);
});
