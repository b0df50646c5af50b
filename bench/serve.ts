/**
 * `bun bench/serve.ts`: serving figures of `quantd agent` on this machine.
 * Prints (median of several runs, never asserted):
 *
 * 1. Round trip over the Unix socket at batch 1 on the shared fp32 model vs
 *    "calling the session directly": `Classifier.classify([text])` in this
 *    process (tokenize + onnxruntime + softmax), same model, same threads,
 *    alternating blocks; on SST-2 dev sentences (~23 tokens) and ~128-token
 *    texts. Also per request: round trip minus the agent's own inference time
 *    (`Server-Timing`), and the same for a floor server (plain Bun, no quantd
 *    code, JS thread kept busy as long as the agent's inference). A third block
 *    times a minimal server: a Bun process that only parses the request, calls
 *    the same classifier and writes JSON, the least any HTTP server with real
 *    inference pays. Target ≤ +10 %.
 * 2. What batching can give at most: onnxruntime alone in process, wall time
 *    per text at batch 1 vs batch 16 (the agent's runs), per model and text set.
 * 3. 16 concurrent clients, one text per request, one keep-alive connection
 *    each: throughput, p50/p99, mean batch, CPU per request of the agent and of
 *    the load generator; "unbatched serving" = the same agent with
 *    `maxBatch 1`. Interleaved paired runs, on the shared fp32 model and on the
 *    int8 model a recalibration serves (quantizer defaults). Target: batched
 *    ≥ 2 × unbatched.
 * 4. Resident memory of an agent serving quantd's int8 models (dynamic and
 *    static) of the shared model: after load, after 16 clients of SST-2
 *    sentences, then of ~128-token texts (the largest batches), and its peak.
 *    Target: ≤ 150 MB.
 * 5. Inference workers (`inferenceWorkers`: one with `--threads`
 *    onnxruntime threads, or two with one each) against the default JS
 *    thread, serving the int8 model: batch-1 round trip, 16-client throughput,
 *    RSS, and the round trip of `/v2/health/live` asked every 10 ms under that
 *    load.
 *
 *   bun bench/serve.ts [--runs 5] [--threads N] [--seconds 3] [--requests 200] [--only 1,2,3,4,5]
 *
 * The client is a raw HTTP/1.1 keep-alive client (0.06–0.2 ms CPU per request),
 * so the load generator takes little of the two cores; each agent is a
 * separate `quantd agent` process, as on a board. On a machine other processes
 * load, `--threads 1` gives steadier figures: a two-thread parallel section
 * waits for whichever thread the kernel descheduled (at load 3–5, 2 threads
 * halved throughput).
 *
 * Figures from a run, with what they mean for the targets: `bench/results/serve.md`.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { Socket, Subprocess } from "bun";
import { classifyBucketed } from "../src/agent/run-planning.ts";
import { median, nearestRankPercentile } from "../src/core/stats.ts";
import { loadModel, saveModel } from "../src/onnx/codec.ts";
import { quantizeModel } from "../src/quant/quantize.ts";
import { loadClassifier } from "../src/runtime/classifier.ts";
import { loadTaskModel } from "../src/runtime/task-model.ts";
import { type RunningAgent, rssOf, startAgentProcess as startAgent } from "./agent-process.ts";

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
    only: { type: "string", default: "1,2,3,4,5" },
  },
});
/** Which of the numbered sections below to run (`--only 1,3`). */
const ONLY = new Set(values.only.split(",").map((s) => Number(s.trim())));
const RUNS = Number(values.runs);
const THREADS = Number(values.threads);
const SECONDS = Number(values.seconds);
const REQUESTS = Number(values.requests);

const sentences = readFileSync(join(repoRoot, "calib/samples/sst2-dev.tsv"), "utf8")
  .split("\n")
  .slice(1)
  .map((l) => l.split("\t")[1] ?? "")
  .filter((s) => s.trim() !== "");

/** Every process the bench started, killed at the end even when a step throws. */
const children: Subprocess[] = [];
function spawned<T extends Subprocess>(p: T): T {
  children.push(p);
  return p;
}

/** What one classify request answered. */
interface Answer {
  status: number;
  /** The agent's inference time from `Server-Timing`, in ms. */
  inferenceMs: number;
  body: Buffer;
}

/**
 * A minimal HTTP/1.1 keep-alive client on a Unix socket, one request in flight
 * per connection. The load generator shares two cores with the agent, so it
 * must cost as little CPU as it can: no fetch, no header objects, no new
 * connection per request (Bun's fetch over a Unix socket costs the client
 * ~0.05 ms more per request than this).
 */
class RawHttpConnection {
  #socket: Socket<undefined> | undefined;
  #buf: Buffer = Buffer.alloc(0);
  #waiter: { resolve: (a: Answer) => void; reject: (e: unknown) => void } | undefined;
  #path = "";
  #closed = false;
  #closing = false;

  static async open(path: string): Promise<RawHttpConnection> {
    const c = new RawHttpConnection();
    c.#path = path;
    await c.#connect();
    return c;
  }

  async #connect(): Promise<void> {
    this.#closed = false;
    this.#buf = Buffer.alloc(0);
    this.#socket = await Bun.connect({
      unix: this.#path,
      socket: {
        data: (_s, chunk) => this.#onData(chunk),
        close: () => {
          this.#closed = true;
          this.#fail(new Error("connection closed"));
        },
        error: (_s, e) => this.#fail(e),
      },
    });
  }

  #fail(e: unknown): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(e);
  }

  #onData(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const head = this.#buf.indexOf("\r\n\r\n");
    if (head < 0) return;
    const header = this.#buf.toString("latin1", 0, head);
    const len = Number(/\r\ncontent-length: *(\d+)/i.exec(header)?.[1] ?? 0);
    if (this.#buf.length < head + 4 + len) return;
    const body = this.#buf.subarray(head + 4, head + 4 + len);
    this.#buf = this.#buf.subarray(head + 4 + len);
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.resolve({
      status: Number(header.slice(9, 12)),
      inferenceMs: Number(/inference;dur=([\d.]+)/.exec(header)?.[1] ?? Number.NaN),
      body,
    });
  }

  post(path: string, json: string): Promise<Answer> {
    return this.request("POST", path, json);
  }

  async request(method: "GET" | "POST", path: string, json?: string): Promise<Answer> {
    // The server closes a connection left idle past its timeout (while other agents are measured): open anew.
    if (this.#closed && !this.#closing) await this.#connect();
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
      this.#socket!.write(
        json === undefined
          ? `${method} ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`
          : `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n` +
              `Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`,
      );
    });
  }

  close(): void {
    this.#closing = true;
    this.#socket?.end();
  }
}

/** Classifies one text over `conn`; returns the agent's inference time (`Server-Timing`), in ms. */
async function classifyOnce(conn: RawHttpConnection, text: string): Promise<number> {
  const a = await conn.post("/v1/classify", JSON.stringify({ texts: [text] }));
  if (a.status !== 200) throw new Error(`classify answered ${a.status}: ${a.body.toString()}`);
  return a.inferenceMs;
}

/** An agent process of this bench, killed at the end with the others. */
function startAgentProcess(
  dir: string,
  name: string,
  env: Record<string, string>,
  model?: string,
): Promise<RunningAgent> {
  return startAgent({
    dir,
    name,
    env,
    threads: THREADS,
    onSpawn: spawned,
    ...(model !== undefined ? { model } : {}),
  });
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

/** Texts and batches the agent has run so far (its `quantd_batch_size` histogram). */
async function batchCounts(socket: string): Promise<{ texts: number; batches: number }> {
  const text = await (await fetch("http://localhost/metrics", { unix: socket })).text();
  const n = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  return { texts: n("quantd_batch_size_sum"), batches: n("quantd_batch_size_count") };
}

/** A ratio as a signed percentage change: 1.074 → "+7.4 %", 0.975 → "-2.5 %". */
function signedPercent(ratio: number): string {
  const p = (ratio - 1) * 100;
  return `${p >= 0 ? "+" : ""}${p.toFixed(1)} %`;
}

/** CPU time of this process (the load generator), in ms. */
function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/**
 * A process answering `/v1/classify` with a fixed body of the agent's shape
 * after keeping its JS thread busy for the request's `spinMs` (onnxruntime-node
 * runs a session synchronously on the JS thread, behind a `setImmediate`, so
 * this is what the agent does minus quantd's code). The same client's round
 * trip minus `spinMs` is the floor Bun's HTTP over the Unix socket and the
 * wake-ups of two processes put under any server whose inference takes that long.
 */
async function startFloorServer(socket: string): Promise<{ stop(): Promise<void> }> {
  const code = `
    const body = JSON.stringify({ results: [{ label: "positive", score: 0.98, logits: [-2.1, 1.9] }],
      model: { version: 1, kind: "fp32" } });
    Bun.serve({ unix: ${JSON.stringify(socket)}, async fetch(req) {
      const { spinMs } = JSON.parse(await req.text());
      const t0 = performance.now();
      await new Promise((r) => setImmediate(r));
      while (performance.now() - t0 < spinMs);
      const dur = (performance.now() - t0).toFixed(3);
      return new Response(body, { headers: { "content-type": "application/json", "server-timing": "inference;dur=" + dur } });
    } });`;
  return serveScript(code, socket, "floor server");
}

/**
 * The least any HTTP server over the Unix socket can do with real inference: a
 * separate Bun process that parses the request, calls the same `Classifier`
 * (same model, threads and session options as the agent's) and writes its
 * results as JSON; no validation, batching, metrics or registry. Its round
 * trip over direct calls is what Bun's HTTP, the two processes' wake-ups and
 * onnxruntime next to a server cost before any quantd serving code.
 */
async function startMinimalServer(socket: string, model: string): Promise<{ stop(): Promise<void> }> {
  const code = `
    const { loadClassifier } = await import(${JSON.stringify(join(repoRoot, "src/runtime/classifier.ts"))});
    const c = await loadClassifier(${JSON.stringify(model)}, {
      tokenizerDir: ${JSON.stringify(modelDir)},
      session: { intraOpThreads: ${THREADS}, enableMemPattern: false },
    });
    Bun.serve({ unix: ${JSON.stringify(socket)}, async fetch(req) {
      const { texts } = await req.json();
      const t0 = performance.now();
      const results = await c.classify(texts);
      const dur = (performance.now() - t0).toFixed(3);
      return new Response(JSON.stringify({ results: results.map((r) => ({ label: r.label, score: r.score, logits: r.logits })) }),
        { headers: { "content-type": "application/json", "server-timing": "inference;dur=" + dur } });
    } });`;
  return serveScript(code, socket, "minimal server");
}

/** Runs `code` in a Bun process and resolves once it listens on `socket` (10 s at most). */
async function serveScript(code: string, socket: string, what: string): Promise<{ stop(): Promise<void> }> {
  const proc = spawned(Bun.spawn(["bun", "-e", code], { stdout: "ignore", stderr: "inherit" }));
  for (let i = 0; !existsSync(socket); i++) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}`);
    if (i > 400) throw new Error(`${what} did not start`);
    await Bun.sleep(25);
  }
  return {
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** Closed-loop clients of the load figures: one request in flight each. */
const CLIENTS = 16;

/** What {@link loadFigures} measured. */
interface Figures {
  rps: number;
  p50: number;
  p99: number;
  cpuMsPerRequest: number;
  clientCpuMsPerRequest: number;
  meanBatch: number;
  /** Round trips of `/v2/health/live` sent every 10 ms meanwhile on one more connection, when asked. */
  health: number[];
}

/**
 * {@link CLIENTS} clients, one text per request, one keep-alive connection each
 * (kept in `conns` across calls), for `--seconds`; with `probeHealth`, one
 * more connection asks `/v2/health/live` every 10 ms meanwhile.
 */
async function loadFigures(
  agent: RunningAgent,
  xs: readonly string[],
  conns: Map<RunningAgent, RawHttpConnection[]>,
  probeHealth = false,
): Promise<Figures> {
  let cs = conns.get(agent);
  if (cs === undefined) {
    cs = await Promise.all(Array.from({ length: CLIENTS + 1 }, () => RawHttpConnection.open(agent.socket)));
    conns.set(agent, cs);
  }
  const probe = cs[CLIENTS]!;
  const b0 = await batchCounts(agent.socket);
  const cpu0 = cpuMsOf(agent.pid);
  const own0 = ownCpuMs();
  const latencies: number[] = [];
  const health: number[] = [];
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  const probing = (async () => {
    while (probeHealth && performance.now() < end) {
      const s = performance.now();
      const a = await probe.request("GET", "/v2/health/live");
      if (a.status !== 200) throw new Error(`health answered ${a.status}`);
      health.push(performance.now() - s);
      await Bun.sleep(10);
    }
  })();
  await Promise.all(
    cs.slice(0, CLIENTS).map(async (conn, c) => {
      for (let i = c; performance.now() < end; i += CLIENTS) {
        const s = performance.now();
        await classifyOnce(conn, xs[i % xs.length]!);
        latencies.push(performance.now() - s);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  await probing;
  const cpu = cpuMsOf(agent.pid) - cpu0;
  const own = ownCpuMs() - own0;
  const b1 = await batchCounts(agent.socket);
  return {
    rps: latencies.length / elapsed,
    p50: nearestRankPercentile(latencies, 50),
    p99: nearestRankPercentile(latencies, 99),
    cpuMsPerRequest: cpu / latencies.length,
    clientCpuMsPerRequest: own / latencies.length,
    meanBatch: (b1.texts - b0.texts) / Math.max(1, b1.batches - b0.batches),
    health,
  };
}

function show(xs: readonly Figures[]): string {
  return (
    `${median(xs.map((x) => x.rps)).toFixed(1)} req/s, p50 ${median(xs.map((x) => x.p50)).toFixed(1)} ms, ` +
    `p99 ${median(xs.map((x) => x.p99)).toFixed(1)} ms, mean batch ${median(xs.map((x) => x.meanBatch)).toFixed(1)}, ` +
    `CPU/request agent ${median(xs.map((x) => x.cpuMsPerRequest)).toFixed(2)} ms, ` +
    `load generator ${median(xs.map((x) => x.clientCpuMsPerRequest)).toFixed(2)} ms`
  );
}

const dir = mkdtempSync(join(tmpdir(), "quantd-serve-bench-"));
/** The int8 model a recalibration job serves (the quantizer's defaults, calibrated on the shipped train sample), made once. */
let int8StaticPath: string | undefined;
function int8Static(): string {
  if (int8StaticPath !== undefined) return int8StaticPath;
  const out = join(dir, "model-int8-static.onnx");
  const q = Bun.spawnSync(
    [
      "bun",
      CLI,
      "quantize",
      "--model",
      join(modelDir, "model.onnx"),
      "--calib",
      join(repoRoot, "calib/samples/sst2-train-4k.tsv"),
      "--out",
      out,
    ],
    { stdout: "ignore", stderr: "pipe" },
  );
  if (q.exitCode !== 0) throw new Error(`quantize failed: ${q.stderr.toString()}`);
  int8StaticPath = out;
  return out;
}

try {
  console.log(
    `model ${join(modelDir, "model.onnx")}, ${THREADS} threads, ${RUNS} runs, load average ${loadAverage()} ` +
      `on ${navigator.hardwareConcurrency} cores`,
  );

  const direct = await loadClassifier(join(modelDir, "model.onnx"), {
    session: { intraOpThreads: THREADS },
  });
  const texts = sentences.slice(0, REQUESTS);
  // The bench library's standard shape: sentences joined up to about 128 tokens.
  const long: string[] = [];
  for (let i = 0; long.length < texts.length; i++) {
    let t = sentences[i % sentences.length]!;
    for (let j = 1; direct.tokenizer.tokenIds(t).length < 120; j++)
      t += ` ${sentences[(i + j * 7) % sentences.length]}`;
    long.push(t);
  }
  // SST-2's training set is phrase-level: its short phrases (≤ 10 tokens, ~6 on average) are the texts
  // where a run's fixed cost dominates, so where batching can give most.
  const phrases = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8")
    .split("\n")
    .slice(1)
    .map((l) => l.split("\t")[1] ?? "")
    .filter((t) => t.trim() !== "" && direct.tokenizer.encode(t).inputIds.length <= 10)
    .slice(0, Math.max(REQUESTS, 200));
  const meanTokens = (xs: readonly string[]): number =>
    xs.reduce((a, t) => a + direct.tokenizer.encode(t).inputIds.length, 0) / xs.length;

  // 1. Batch-1 round trip vs direct.
  if (ONLY.has(1)) {
    const agent = await startAgentProcess(dir, "rt", {}, join(modelDir, "model.onnx"));
    const conn = await RawHttpConnection.open(agent.socket);
    const floorSocket = join(dir, "floor.sock");
    const floor = await startFloorServer(floorSocket);
    const floorConn = await RawHttpConnection.open(floorSocket);
    const minimalSocket = join(dir, "minimal.sock");
    const minimal = await startMinimalServer(minimalSocket, join(modelDir, "model.onnx"));
    const minimalConn = await RawHttpConnection.open(minimalSocket);
    const roundTrip = async (texts: readonly string[], what: string): Promise<void> => {
      for (const t of texts.slice(0, 20)) {
        await direct.classify([t]);
        await classifyOnce(conn, t);
        await classifyOnce(minimalConn, t);
      }
      const socketMedians: number[] = [];
      const minimalMedians: number[] = [];
      const directMedians: number[] = [];
      const floorMedians: number[] = [];
      // Per request: round trip minus the agent's own inference time (Server-Timing), immune to drift
      // in machine load between the direct and the socket blocks.
      const overheadMs: number[] = [];
      const inferenceMs: number[] = [];
      let floorBody = "";
      for (let run = 0; run < RUNS; run++) {
        const s: number[] = [];
        const d: number[] = [];
        const f: number[] = [];
        const m: number[] = [];
        // Blocks rotate in order from run to run, so drift in machine load hits all three alike; not per
        // request: onnxruntime's worker threads spin for a while after a run and would steal the cores of
        // whichever process runs next.
        const block = async (which: "direct" | "socket" | "minimal" | "floor"): Promise<void> => {
          for (const t of texts) {
            const t0 = performance.now();
            if (which === "direct") {
              await direct.classify([t]);
              d.push(performance.now() - t0);
            } else if (which === "floor") {
              const a = await floorConn.post("/v1/classify", floorBody);
              f.push(performance.now() - t0 - a.inferenceMs);
            } else if (which === "minimal") {
              await classifyOnce(minimalConn, t);
              m.push(performance.now() - t0);
            } else {
              const inference = await classifyOnce(conn, t);
              const rtt = performance.now() - t0;
              s.push(rtt);
              overheadMs.push(rtt - inference);
              inferenceMs.push(inference);
            }
          }
        };
        const blocks = ["direct", "socket", "minimal"] as const;
        const order = [0, 1, 2].map((k) => blocks[(k + run) % 3]!);
        for (const b of order) await block(b);
        floorBody = JSON.stringify({ spinMs: median(inferenceMs), texts: ["-"] });
        await block("floor");
        socketMedians.push(median(s));
        minimalMedians.push(median(m));
        directMedians.push(median(d));
        floorMedians.push(median(f));
      }
      const sm = median(socketMedians);
      const dm = median(directMedians);
      const fm = median(floorMedians);
      console.log(
        `round trip batch 1, ${what}, ${meanTokens(texts).toFixed(0)} tokens on average ` +
          `(median of ${RUNS} medians of ${texts.length} requests): direct ${dm.toFixed(3)} ms, ` +
          `socket ${sm.toFixed(3)} ms, overhead ${(((sm - dm) / dm) * 100).toFixed(1)} % ` +
          `(+${(sm - dm).toFixed(3)} ms) [target <= +10 %]`,
      );
      const mm = median(minimalMedians);
      console.log(
        `  a minimal Bun server calling the same classifier (no quantd serving code): ${mm.toFixed(3)} ms, ` +
          `${signedPercent(mm / dm)} over direct; the agent over it ${signedPercent(sm / mm)}`,
      );
      const oh = median(overheadMs);
      const inf = median(inferenceMs);
      console.log(
        `  per request: agent's inference ${inf.toFixed(3)} ms (Server-Timing), round trip minus it ` +
          `+${oh.toFixed(3)} ms = +${((oh / inf) * 100).toFixed(1)} %; floor (a Bun server busy as long, no quantd ` +
          `code, same client) +${fm.toFixed(3)} ms = +${((fm / inf) * 100).toFixed(1)} %`,
      );
    };
    await roundTrip(texts, "SST-2 dev sentences");
    await roundTrip(long, "~128-token texts");
    conn.close();
    floorConn.close();
    minimalConn.close();
    await floor.stop();
    await minimal.stop();
    await agent.stop();
  }

  // 2. What batching can give at most: onnxruntime alone, CPU per text at batch 1 vs batch 16 (the
  // agent's runs of similar length), in this process with the agents idle.
  if (ONLY.has(2)) {
    const int8 = await loadTaskModel(int8Static(), {
      tokenizerDir: modelDir,
      session: { intraOpThreads: THREADS },
    });
    const fp32 = await loadTaskModel(join(modelDir, "model.onnx"), { session: { intraOpThreads: THREADS } });
    for (const [modelName, classifier] of [
      ["fp32", fp32],
      ["int8 static", int8],
    ] as const) {
      for (const [what, xs] of [
        ["SST-2 phrase", phrases],
        ["SST-2 dev", texts],
        ["~128-token", long],
      ] as const) {
        const n = Math.min(xs.length, 96);
        // Wall time per text is what throughput follows; CPU time also counts onnxruntime's spinning threads.
        const perText = async (batch: number): Promise<{ wall: number; cpu: number }> => {
          const one = async (): Promise<void> => {
            for (let i = 0; i < n; i += batch) await classifyBucketed(classifier, xs.slice(i, i + batch));
          };
          await one();
          const wall: number[] = [];
          const cpu: number[] = [];
          for (let r = 0; r < RUNS; r++) {
            const c0 = ownCpuMs();
            const t0 = performance.now();
            await one();
            wall.push((performance.now() - t0) / n);
            cpu.push((ownCpuMs() - c0) / n);
          }
          return { wall: median(wall), cpu: median(cpu) };
        };
        const b1 = await perText(1);
        const b16 = await perText(16);
        console.log(
          `in process, ${modelName}, ${what} texts (${meanTokens(xs).toFixed(0)} tokens): ${b1.wall.toFixed(3)} ms/text ` +
            `at batch 1, ${b16.wall.toFixed(3)} at batch 16 (the agent's runs; CPU ${b1.cpu.toFixed(3)} / ` +
            `${b16.cpu.toFixed(3)}): batching alone can give at most ${(b1.wall / b16.wall).toFixed(2)} ×`,
        );
      }
    }
    await int8.release();
    await fp32.release();
  }

  // 3. 16 concurrent clients, batched vs unbatched (same agent code, maxBatch 1).
  if (ONLY.has(3)) {
    // The shared fp32 model, and the int8 model a recalibration job serves (the quantizer's defaults,
    // calibrated on the shipped train sample), which batching helps more: its per-token work is smaller.
    const int8 = int8Static();
    for (const [modelName, model] of [
      ["fp32", join(modelDir, "model.onnx")],
      ["int8 static", int8],
    ] as const) {
      const conns = new Map<RunningAgent, RawHttpConnection[]>();
      const measure = (agent: RunningAgent, xs: readonly string[]): Promise<Figures> =>
        loadFigures(agent, xs, conns);
      const env = { QUANTD_TOKENIZER_DIR: modelDir };
      const batched = await startAgentProcess(
        dir,
        `batched-${modelName.replace(" ", "-")}`,
        { ...env, QUANTD_BATCHING_MAX_BATCH: "16" },
        model,
      );
      const unbatched = await startAgentProcess(
        dir,
        `unbatched-${modelName.replace(" ", "-")}`,
        { ...env, QUANTD_BATCHING_MAX_BATCH: "1" },
        model,
      );
      for (const [what, xs] of [
        ["SST-2 phrases", phrases],
        ["SST-2 dev sentences", texts],
        ["~128-token texts", long],
      ] as const) {
        const b: Figures[] = [];
        const u: Figures[] = [];
        await measure(batched, xs);
        await measure(unbatched, xs);
        // Interleaved, alternating which goes first, so drift in machine load hits both alike.
        for (let run = 0; run < RUNS; run++) {
          if (run % 2 === 0) {
            b.push(await measure(batched, xs));
            u.push(await measure(unbatched, xs));
          } else {
            u.push(await measure(unbatched, xs));
            b.push(await measure(batched, xs));
          }
        }
        const ratios = b.map((x, i) => x.rps / u[i]!.rps);
        console.log(`16 clients, ${modelName}, ${what}, batched (maxBatch 16): ${show(b)}`);
        console.log(`16 clients, ${modelName}, ${what}, unbatched (maxBatch 1): ${show(u)}`);
        console.log(
          `  throughput batched / unbatched: ${median(ratios).toFixed(2)} × (median of ${RUNS} paired runs; ` +
            `range ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}) [target >= 2 ×]`,
        );
      }
      for (const cs of conns.values()) for (const c of cs) c.close();
      await batched.stop();
      await unbatched.stop();
    }
  }

  // 5. Inference in a worker thread (the agent's default) vs on the server's JS thread, batched: batch-1
  // round trip, 16-client throughput, and how long a health check waits meanwhile. Interleaved pairs.
  if (ONLY.has(5)) {
    const variants: { name: string; env: Record<string, string> }[] = [
      { name: `JS thread, ${THREADS} onnxruntime threads`, env: { QUANTD_INFERENCE_WORKERS: "0" } },
      { name: `1 worker, ${THREADS} onnxruntime threads`, env: { QUANTD_INFERENCE_WORKERS: "1" } },
      // One session per core, one onnxruntime thread each, two batches at once.
      {
        name: "2 workers, 1 onnxruntime thread each",
        env: { QUANTD_INFERENCE_WORKERS: "2", QUANTD_THREADS: "1" },
      },
    ];
    const agents: RunningAgent[] = [];
    for (const [i, v] of variants.entries()) {
      agents.push(
        await startAgentProcess(
          dir,
          `thread-${i}`,
          { QUANTD_TOKENIZER_DIR: modelDir, ...v.env },
          int8Static(),
        ),
      );
    }
    const conns = new Map<RunningAgent, RawHttpConnection[]>();
    const single = new Map<RunningAgent, RawHttpConnection>();
    for (const a of agents) single.set(a, await RawHttpConnection.open(a.socket));
    const roundTrips = async (agent: RunningAgent, xs: readonly string[]): Promise<number> => {
      const conn = single.get(agent)!;
      const rtt: number[] = [];
      for (const t of xs) {
        const t0 = performance.now();
        await classifyOnce(conn, t);
        rtt.push(performance.now() - t0);
      }
      return median(rtt);
    };
    const healthOf = (fs: Figures[]): string => {
      const all = fs.flatMap((f) => f.health);
      return `p50 ${nearestRankPercentile(all, 50).toFixed(2)} ms, p99 ${nearestRankPercentile(all, 99).toFixed(2)} ms, max ${Math.max(...all).toFixed(1)} ms`;
    };
    for (const [what, xs] of [
      ["SST-2 dev sentences", texts],
      ["~128-token texts", long],
    ] as const) {
      const rt = agents.map(() => [] as number[]);
      const load = agents.map(() => [] as Figures[]);
      for (const a of agents) await roundTrips(a, xs.slice(0, 20));
      for (let run = 0; run < RUNS; run++) {
        // Rotated order from run to run, so drift in machine load hits every variant alike.
        const order = agents.map((_, i) => (i + run) % agents.length);
        for (const i of order) rt[i]!.push(await roundTrips(agents[i]!, xs));
        for (const i of order) load[i]!.push(await loadFigures(agents[i]!, xs, conns, true));
      }
      const base = median(load[0]!.map((f) => f.rps));
      for (const [i, v] of variants.entries()) {
        const rps = median(load[i]!.map((f) => f.rps));
        console.log(
          `int8 static, ${what}, ${v.name}: batch-1 round trip ${median(rt[i]!).toFixed(3)} ms; 16 clients ` +
            `${(rps / base).toFixed(2)} × the first; health check under that load ${healthOf(load[i]!)}`,
        );
        console.log(`  ${show(load[i]!)}, agent RSS ${rssOf(agents[i]!.pid).rssMb.toFixed(1)} MB`);
      }
    }
    for (const c of single.values()) c.close();
    for (const cs of conns.values()) for (const c of cs) c.close();
    for (const a of agents) await a.stop();
  }

  // 4. RSS serving the int8 model.
  if (ONLY.has(4)) {
    const dynamic = join(dir, "model-int8-dynamic.onnx");
    const q = await quantizeModel(await loadModel(join(modelDir, "model.onnx")), { type: "dynamic" });
    await saveModel(q.model, dynamic);
    for (const [kind, model] of [
      ["dynamic", dynamic],
      ["static", int8Static()],
    ] as const) {
      const agent = await startAgentProcess(dir, `int8-${kind}`, { QUANTD_TOKENIZER_DIR: modelDir }, model);
      const afterLoad = rssOf(agent.pid);
      const cs = await Promise.all(Array.from({ length: 16 }, () => RawHttpConnection.open(agent.socket)));
      const serve = async (xs: readonly string[]): Promise<void> => {
        const end = performance.now() + SECONDS * 1000;
        await Promise.all(
          cs.map(async (conn, c) => {
            for (let i = c; performance.now() < end; i += 16) await classifyOnce(conn, xs[i % xs.length]!);
          }),
        );
      };
      await serve(sentences);
      const afterSentences = rssOf(agent.pid);
      // The largest batches: 16 texts of ~128 tokens.
      await serve(long);
      const afterLong = rssOf(agent.pid);
      for (const c of cs) c.close();
      await agent.stop();
      console.log(
        `agent RSS serving int8 (${kind}) model: after load ${afterLoad.rssMb.toFixed(1)} MB, after ${SECONDS} s of ` +
          `16 clients on SST-2 sentences ${afterSentences.rssMb.toFixed(1)} MB, then ~128-token texts ` +
          `${afterLong.rssMb.toFixed(1)} MB, peak ${afterLong.peakMb.toFixed(1)} MB [target <= 150 MB]`,
      );
    }
  }
  await direct.release();
  console.log(`load average at the end: ${loadAverage()}`);
} finally {
  for (const p of children) if (p.exitCode === null) p.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
