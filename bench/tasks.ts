/**
 * The task heads' targets, printed (never asserted):
 * 1. static int8 with default flags meets each task's default gate on its
 *    fixture (`test/fixtures/tasks/`): trial unit, agreement with its 95 %
 *    bound, the task's own figures, size ratio, fallback trials;
 * 2. over the agent's socket, real agent processes serving the int8 models:
 *    texts per second of the embedding model next to the sentence classifier
 *    of the same encoder body (and the other heads), C concurrent clients of
 *    one SST-2 sentence each; medians of runs;
 * 3. memory per task: the agent's resident set after loading, and its peak
 *    after the load.
 *
 *   bun bench/tasks.ts [--val 1024] [--clients 8] [--seconds 3] [--runs 3] [--markdown FILE]
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { isQuantdError } from "../src/errors.ts";
import { runQuantization } from "../src/quant/pipeline.ts";
import type { QuantizeReport } from "../src/quant/report.ts";
import { copyModelDirFiles, findModelFiles } from "../src/runtime/model-files.ts";
import { writeEncoderFixture } from "../test/fixtures/encoders/write-fixture.ts";
import { TASK_FIXTURES, writeTaskFixture } from "../test/fixtures/tasks/task-heads.ts";
import { type RunningAgent, rssOf, startAgentProcess } from "./agent-process.ts";
import { median } from "../src/core/stats.ts";

const repoRoot = resolve(import.meta.dir, "..");
const poolTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
const devTsv = join(repoRoot, "calib/samples/sst2-dev.tsv");

const { values } = parseArgs({
  options: {
    val: { type: "string", default: "1024" },
    clients: { type: "string", default: "8" },
    seconds: { type: "string", default: "3" },
    runs: { type: "string", default: "3" },
    markdown: { type: "string" },
  },
});
const VAL = Number(values.val);
const CLIENTS = Number(values.clients);
const SECONDS = Number(values.seconds);
const RUNS = Number(values.runs);

type Kind = "classification" | (typeof TASK_FIXTURES)[number];
/** A served route: each task's, and embeddings also as base64 float32. */
type Served = Kind | "embedding (base64)";
const KINDS: readonly Kind[] = ["classification", ...TASK_FIXTURES];

const root = mkdtempSync(join(tmpdir(), "quantd-bench-tasks-"));
const children: Subprocess[] = [];
const lines: string[] = [];
const say = (line: string): void => {
  console.log(line);
  lines.push(line);
};

/** A fixture of each kind; `classification` is the BERT architecture fixture the task heads are built on. */
async function fixture(kind: Kind): Promise<string> {
  const dir = join(root, kind, "fp32");
  if (kind === "classification") await writeEncoderFixture("bert", dir);
  else await writeTaskFixture(kind, dir);
  return dir;
}

/** Pairs of SST-2 sentences for the pair classifier's calibration and validation. */
function pairsTsv(): string {
  const rows = readFileSync(poolTsv, "utf8")
    .split("\n")
    .slice(1)
    .filter((l) => l !== "");
  const texts = rows.map((r) => r.split("\t")[0]!);
  const out = ["premise\thypothesis"];
  for (let i = 0; i + 1 < texts.length; i += 2) out.push(`${texts[i]}\t${texts[i + 1]}`);
  const path = join(root, "pairs.tsv");
  writeFileSync(path, `${out.join("\n")}\n`);
  return path;
}

interface GateRow {
  kind: Kind;
  report?: QuantizeReport;
  error?: string;
  int8Dir?: string;
}

async function quantizeEach(dirs: Record<Kind, string>): Promise<GateRow[]> {
  const pairs = pairsTsv();
  const rows: GateRow[] = [];
  for (const kind of KINDS) {
    const int8Dir = join(root, kind, "int8");
    mkdirSync(int8Dir, { recursive: true });
    try {
      const { report } = await runQuantization({
        model: dirs[kind],
        calib: kind === "pair-classification" ? pairs : poolTsv,
        out: join(int8Dir, "model.onnx"),
        validationSamples: VAL,
        threads: 1,
      });
      copyModelDirFiles(findModelFiles(dirs[kind]), int8Dir);
      rows.push({ kind, report, int8Dir });
    } catch (err) {
      rows.push({ kind, error: isQuantdError(err) ? `${err.code}: ${err.message}` : String(err) });
    }
  }
  return rows;
}

function pct(x: number | undefined): string {
  return x === undefined ? "—" : `${(Math.floor(x * 1000) / 10).toFixed(1)} %`;
}

function taskFigures(r: QuantizeReport): string {
  const t = r.metrics.task;
  if (t === undefined) return "";
  const f = t.figures;
  const parts: string[] = [];
  if (t.unit !== "sample") parts.push(`all ${t.unit}s of a sample agree: ${pct(t.sampleAgreement)}`);
  if (f["meanCosine"] !== undefined) {
    parts.push(
      `cos mean ${f["meanCosine"].toFixed(4)}, worst 1 % ${f["worst1PctCosine"]!.toFixed(4)}, top-5 overlap ${f["neighbourOverlap"]!.toFixed(3)}`,
    );
  }
  if (f["pearson"] !== undefined)
    parts.push(`Pearson ${f["pearson"].toFixed(4)}, max |err| ${f["maxAbsError"]!.toFixed(4)}`);
  return parts.join("; ");
}

/** `12.3 s, 2,048 sample-runs, 1 failed early`: what validating every candidate cost, with early stops. */
function validationText(r: QuantizeReport): string {
  const v = r.validation;
  if (v === undefined) return "";
  const stops = [
    v.earlyStops.passed > 0 ? `${v.earlyStops.passed} passed early` : "",
    v.earlyStops.failed > 0 ? `${v.earlyStops.failed} failed early` : "",
  ].filter((x) => x !== "");
  return [
    `${(r.timings.validationMs / 1000).toFixed(1)} s`,
    `${v.candidateSamples.toLocaleString("en-US")} sample-runs`,
    ...stops,
  ].join(", ");
}

function printGates(rows: readonly GateRow[]): void {
  say("");
  say(
    `## 1. Static int8, default flags, default gate (99.5 % on the 95 % lower bound), ${VAL} held-out samples`,
  );
  say("");
  say(
    "| task | trial | n | agreement | 95 % bound | gate | fallback trials | size | validation | task figures |",
  );
  say("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |");
  for (const row of rows) {
    if (row.report === undefined) {
      say(`| ${row.kind} | | | | | not met: ${row.error} | | | | |`);
      continue;
    }
    const r = row.report;
    const m = r.metrics;
    say(
      `| ${row.kind} | ${m.task?.unit ?? "sample"} | ${m.n.toLocaleString("en-US")} | ${pct(m.agreement)} | ${pct(m.agreementLower)} | ` +
        `${r.gate.passed ? "met" : "not met"} | ${r.fallback.trials.length} | ${pct(r.model.sizeRatio)} | ` +
        `${validationText(r)} | ${taskFigures(r)} |`,
    );
  }
}

function startTaskAgent(name: string, model: string): Promise<RunningAgent> {
  return startAgentProcess({
    dir: root,
    name,
    model,
    threads: 1,
    env: { QUANTD_LOG_LEVEL: "error" },
    onSpawn: (p) => children.push(p),
  });
}

/** The route and body of one request of each task. */
function requestOf(kind: Served, text: string, other: string): { path: string; body: string } {
  switch (kind) {
    case "embedding":
      return { path: "/v1/embed", body: JSON.stringify({ texts: [text] }) };
    case "embedding (base64)":
      return { path: "/v1/embed", body: JSON.stringify({ texts: [text], encoding: "base64" }) };
    case "token-classification":
      return { path: "/v1/tokens", body: JSON.stringify({ texts: [text] }) };
    case "pair-classification":
      return { path: "/v1/classify", body: JSON.stringify({ pairs: [[text, other]] }) };
    default:
      return { path: "/v1/classify", body: JSON.stringify({ texts: [text] }) };
  }
}

/** Texts per second with `CLIENTS` clients sending one text at a time for `SECONDS`. */
async function throughput(kind: Served, agent: RunningAgent, texts: readonly string[]): Promise<number> {
  let done = 0;
  const until = performance.now() + SECONDS * 1000;
  const client = async (c: number): Promise<void> => {
    for (let i = c; performance.now() < until; i += CLIENTS) {
      const { path, body } = requestOf(kind, texts[i % texts.length]!, texts[(i + 1) % texts.length]!);
      const r = await fetch(`http://localhost${path}`, {
        unix: agent.socket,
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      if (r.status !== 200) throw new Error(`${kind} ${path} answered ${r.status}: ${await r.text()}`);
      await r.arrayBuffer();
      done++;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
  return done / ((performance.now() - t0) / 1000);
}

async function serveEach(rows: readonly GateRow[]): Promise<void> {
  const texts = readFileSync(devTsv, "utf8")
    .split("\n")
    .slice(1)
    .filter((l) => l !== "")
    .map((l) => l.split("\t")[0]!);
  say("");
  say(
    `## 2–3. Agents serving the int8 models over the Unix socket (1 onnxruntime thread, ${CLIENTS} clients, ` +
      `one SST-2 dev sentence per request, ${RUNS} runs of ${SECONDS} s, median)`,
  );
  say("");
  say("| task | texts/s | × classification | RSS after load | RSS after the runs | peak RSS |");
  say("| --- | ---: | ---: | ---: | ---: | ---: |");
  // Every agent up at once and measured in rounds (A B C … A B C …): drift of a shared machine hits all alike.
  const agents: { kind: Served; agent: RunningAgent; loadedMb: number }[] = [];
  try {
    for (const row of rows) {
      if (row.int8Dir === undefined) continue;
      const agent = await startTaskAgent(row.kind, row.int8Dir);
      const loadedMb = rssOf(agent.pid).rssMb;
      const served: Served[] = row.kind === "embedding" ? ["embedding", "embedding (base64)"] : [row.kind];
      for (const kind of served) agents.push({ kind, agent, loadedMb });
    }
    const rates = new Map<Served, number[]>(agents.map((a) => [a.kind, []]));
    for (const a of agents) await throughput(a.kind, a.agent, texts.slice(0, 64)); // warm-up
    for (let r = 0; r < RUNS; r++) {
      for (const a of agents) rates.get(a.kind)!.push(await throughput(a.kind, a.agent, texts));
    }
    const classification = median(rates.get("classification") ?? []);
    for (const a of agents) {
      const rate = median(rates.get(a.kind)!);
      const after = rssOf(a.agent.pid);
      say(
        `| ${a.kind} | ${rate.toFixed(0)} | ${(rate / classification).toFixed(2)} × | ${a.loadedMb.toFixed(0)} MB | ` +
          `${after.rssMb.toFixed(0)} MB | ${after.peakMb.toFixed(0)} MB |`,
      );
    }
  } finally {
    for (const a of new Set(agents.map((x) => x.agent))) await a.stop();
  }
}

try {
  say(`# bench/tasks.ts — ${new Date().toISOString()}, ${navigator.hardwareConcurrency} cores`);
  const dirs = {} as Record<Kind, string>;
  for (const kind of KINDS) dirs[kind] = await fixture(kind);
  const rows = await quantizeEach(dirs);
  printGates(rows);
  await serveEach(rows);
  if (values.markdown !== undefined) writeFileSync(values.markdown, `${lines.join("\n")}\n`);
} finally {
  for (const c of children) c.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
}
