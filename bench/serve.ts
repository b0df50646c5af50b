/**
 * `bun bench/serve.ts`: serving figures of `quantd agent` on this machine.
 * Prints (median of several runs, never asserted):
 *
 * 1. Round trip over the Unix socket at batch 1 on the shared fp32 model vs
 *    calling the classifier (tokenize + session + softmax) in process, same
 *    threads, alternating blocks; on SST-2 sentences (short: ~25 tokens) and
 *    on ~128-token texts. Target: socket ≤ +10 %.
 * 2. 16 concurrent clients sending one text each, request after request:
 *    throughput and p50/p99 latency with dynamic batching vs unbatched
 *    (`maxBatch 1`). Target: batched ≥ 2 × unbatched.
 * 3. Resident memory of an agent serving quantd's int8 model of the shared
 *    model, after load and after serving. Target: ≤ 150 MB.
 *
 *   bun bench/serve.ts [--runs 5] [--threads N] [--seconds 3] [--requests 200]
 *
 * On a machine other processes load, `--threads 1` gives steadier figures:
 * a two-thread parallel section waits for whichever thread the kernel
 * descheduled.
 *
 * Each agent is a separate `quantd agent` process, as on a board.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadModel, saveModel } from "../src/onnx/codec.ts";
import { quantizeModel } from "../src/quant/quantize.ts";
import { loadClassifier } from "../src/runtime/classifier.ts";

const repoRoot = resolve(import.meta.dir, "..");
const sharedDir = resolve(repoRoot, "../shared/models/sst2-bert-mini");
const modelDir = (await Bun.file(join(sharedDir, "model.onnx")).exists())
  ? sharedDir
  : join(repoRoot, "calib/models/sst2-bert-mini");
const CLI = join(repoRoot, "src/cli/main.ts");

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "5" },
    threads: { type: "string", default: "2" },
    seconds: { type: "string", default: "3" },
    requests: { type: "string", default: "200" },
  },
});
const RUNS = Number(values.runs);
const THREADS = Number(values.threads);
const SECONDS = Number(values.seconds);
const REQUESTS = Number(values.requests);

const sentences = readFileSync(join(repoRoot, "calib/samples/sst2-dev.tsv"), "utf8")
  .split("\n")
  .slice(1)
  .map((l) => l.split("\t")[1] ?? "")
  .filter((s) => s.trim() !== "");

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
}

interface RunningAgent {
  socket: string;
  pid: number;
  stop(): Promise<void>;
}

async function startAgentProcess(
  dir: string,
  name: string,
  env: Record<string, string>,
  model?: string,
): Promise<RunningAgent> {
  const socket = join(dir, `${name}.sock`);
  const args = ["bun", CLI, "agent", "--state-dir", join(dir, name), "--socket", socket];
  if (model !== undefined) args.push("--model", model);
  const proc = Bun.spawn(args, {
    env: { ...process.env, QUANTD_THREADS: String(THREADS), QUANTD_CONFIG: "", ...env },
    stdout: "ignore",
    stderr: "pipe",
  });
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null)
      throw new Error(`agent ${name} exited: ${await new Response(proc.stderr).text()}`);
    try {
      const r = await fetch("http://localhost/v2/health/ready", { unix: socket });
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() - t0 > 60_000) throw new Error(`agent ${name} not ready`);
    await Bun.sleep(50);
  }
  return {
    socket,
    pid: proc.pid,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** Classifies over the socket; returns the agent's inference time from `Server-Timing`, in ms. */
async function classifyOnce(socket: string, texts: string[]): Promise<number> {
  const res = await fetch("http://localhost/v1/classify", {
    unix: socket,
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ texts }),
  });
  if (res.status !== 200) throw new Error(`classify answered ${res.status}: ${await res.text()}`);
  await res.arrayBuffer();
  return Number(/inference;dur=([\d.]+)/.exec(res.headers.get("server-timing") ?? "")?.[1] ?? Number.NaN);
}

function rssOf(pid: number): { rssMb: number; peakMb: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string): number =>
    Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? 0);
  return { rssMb: kb("VmRSS") / 1024, peakMb: kb("VmHWM") / 1024 };
}

/** User + system CPU time of a process, in ms (load on other cores does not inflate it as it does wall time). */
function cpuMsOf(pid: number): number {
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

const dir = mkdtempSync(join(tmpdir(), "quantd-serve-bench-"));
try {
  console.log(
    `model ${join(modelDir, "model.onnx")}, ${THREADS} threads, ${RUNS} runs, load average ${loadAverage()} ` +
      `on ${navigator.hardwareConcurrency} cores`,
  );

  // 1. Batch-1 round trip vs direct.
  {
    const agent = await startAgentProcess(dir, "rt", {}, join(modelDir, "model.onnx"));
    const direct = await loadClassifier(join(modelDir, "model.onnx"), {
      session: { intraOpThreads: THREADS },
    });
    const roundTrip = async (texts: readonly string[], what: string): Promise<void> => {
      for (const t of texts.slice(0, 20)) {
        await direct.classify([t]);
        await classifyOnce(agent.socket, [t]);
      }
      const socketMedians: number[] = [];
      const directMedians: number[] = [];
      // Per request: round trip minus the agent's own inference time (Server-Timing), immune to drift
      // in machine load between the direct and the socket blocks.
      const overheadMs: number[] = [];
      const overheadRatio: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        const s: number[] = [];
        const d: number[] = [];
        // Blocks alternate in order from run to run, so drift in machine load hits both alike; not per
        // request: onnxruntime's worker threads spin for a while after a run and would steal the cores of
        // whichever process runs next.
        const block = async (which: "direct" | "socket"): Promise<void> => {
          for (const t of texts) {
            const t0 = performance.now();
            if (which === "direct") {
              await direct.classify([t]);
              d.push(performance.now() - t0);
            } else {
              const inference = await classifyOnce(agent.socket, [t]);
              const rtt = performance.now() - t0;
              s.push(rtt);
              overheadMs.push(rtt - inference);
              overheadRatio.push(rtt / inference - 1);
            }
          }
        };
        if (run % 2 === 0) {
          await block("direct");
          await block("socket");
        } else {
          await block("socket");
          await block("direct");
        }
        socketMedians.push(median(s));
        directMedians.push(median(d));
      }
      const sm = median(socketMedians);
      const dm = median(directMedians);
      console.log(
        `round trip batch 1, ${what} (median of ${RUNS} medians of ${texts.length} requests): ` +
          `direct ${dm.toFixed(3)} ms, socket ${sm.toFixed(3)} ms, overhead ${(((sm - dm) / dm) * 100).toFixed(1)} % ` +
          `(+${(sm - dm).toFixed(3)} ms) [target <= +10 %]`,
      );
      console.log(
        `  per request, round trip vs the agent's own inference time: +${median(overheadMs).toFixed(3)} ms, ` +
          `+${(median(overheadRatio) * 100).toFixed(1)} % (median of ${overheadMs.length})`,
      );
    };
    const texts = sentences.slice(0, REQUESTS);
    await roundTrip(texts, "SST-2 dev sentences");
    // The bench library's standard shape: sentences joined up to about 128 tokens.
    const long: string[] = [];
    for (let i = 0; long.length < texts.length; i++) {
      let t = sentences[i % sentences.length]!;
      for (let j = 1; direct.tokenizer.tokenIds(t).length < 120; j++)
        t += ` ${sentences[(i + j * 7) % sentences.length]}`;
      long.push(t);
    }
    await roundTrip(long, "~128-token texts");
    await direct.release();
    await agent.stop();
  }

  // 2. 16 concurrent clients, batched vs unbatched.
  {
    const CLIENTS = 16;
    type Figures = { rps: number; p50: number; p99: number; cpuMsPerRequest: number };
    const measure = async (agent: RunningAgent): Promise<Figures> => {
      const socket = agent.socket;
      const cpu0 = cpuMsOf(agent.pid);
      const latencies: number[] = [];
      const end = performance.now() + SECONDS * 1000;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: CLIENTS }, async (_, c) => {
          for (let i = c; performance.now() < end; i += CLIENTS) {
            const s = performance.now();
            await classifyOnce(socket, [sentences[i % sentences.length]!]);
            latencies.push(performance.now() - s);
          }
        }),
      );
      const elapsed = (performance.now() - t0) / 1000;
      return {
        rps: latencies.length / elapsed,
        p50: percentile(latencies, 0.5),
        p99: percentile(latencies, 0.99),
        cpuMsPerRequest: (cpuMsOf(agent.pid) - cpu0) / latencies.length,
      };
    };
    const batched = await startAgentProcess(
      dir,
      "batched",
      { QUANTD_BATCHING_MAX_BATCH: "16" },
      join(modelDir, "model.onnx"),
    );
    const unbatched = await startAgentProcess(
      dir,
      "unbatched",
      { QUANTD_BATCHING_MAX_BATCH: "1" },
      join(modelDir, "model.onnx"),
    );
    const b: Figures[] = [];
    const u: Figures[] = [];
    await measure(batched);
    await measure(unbatched);
    for (let run = 0; run < RUNS; run++) {
      b.push(await measure(batched));
      u.push(await measure(unbatched));
    }
    await batched.stop();
    await unbatched.stop();
    const show = (xs: Figures[]): string =>
      `${median(xs.map((x) => x.rps)).toFixed(1)} req/s, p50 ${median(xs.map((x) => x.p50)).toFixed(1)} ms, ` +
      `p99 ${median(xs.map((x) => x.p99)).toFixed(1)} ms, agent CPU ${median(xs.map((x) => x.cpuMsPerRequest)).toFixed(2)} ms/request`;
    const ratio = median(b.map((x) => x.rps)) / median(u.map((x) => x.rps));
    console.log(`16 clients, batched (maxBatch 16): ${show(b)}`);
    console.log(`16 clients, unbatched (maxBatch 1): ${show(u)}`);
    console.log(`throughput batched / unbatched: ${ratio.toFixed(2)} × [target >= 2 ×]`);
  }

  // 3. RSS serving the int8 model.
  {
    const int8 = join(dir, "model-int8-dynamic.onnx");
    const q = await quantizeModel(await loadModel(join(modelDir, "model.onnx")), { type: "dynamic" });
    await saveModel(q.model, int8);
    const agent = await startAgentProcess(dir, "int8", { QUANTD_TOKENIZER_DIR: modelDir }, int8);
    const afterLoad = rssOf(agent.pid);
    const end = performance.now() + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: 16 }, async (_, c) => {
        for (let i = c; performance.now() < end; i += 16)
          await classifyOnce(agent.socket, [sentences[i % sentences.length]!]);
      }),
    );
    const afterServing = rssOf(agent.pid);
    await agent.stop();
    console.log(
      `agent RSS serving int8 (dynamic) model: after load ${afterLoad.rssMb.toFixed(1)} MB, after ${SECONDS} s of ` +
        `16 clients ${afterServing.rssMb.toFixed(1)} MB, peak ${afterServing.peakMb.toFixed(1)} MB [target <= 150 MB]`,
    );
  }
  console.log(`load average at the end: ${loadAverage()}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
