/**
 * `quantd demo`: what quantd does, end to end, on the model and samples shipped
 * in the repository, with nothing else needed (no `../shared`, no network, no
 * broker to install): the fp32 model alone, then the full fleet loop on this
 * machine — an MQTT broker (embedded unless `--broker` names one), the agent
 * on a temporary socket joined to fleet `demo`, the fleet controller, a
 * recalibration the controller's side sends over MQTT (the path of
 * `quantd fleet recalibrate --wait`), the device's report as the controller
 * stored it, and the promoted int8 model answering over the socket.
 *
 * The demo is a list of named steps sharing one state, each printing its own
 * lines ({@link DEMO_STEPS}).
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { arch, cpus, tmpdir } from "node:os";
import { join, relative } from "node:path";
import { type Agent, startAgent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import type { RecalibrationResult } from "../../agent/recalibrate.ts";
import { describeLatencyRatio } from "../../bench/compare.ts";
import { QuantdError } from "../../errors.ts";
import { type FleetController, startController } from "../../fleet/controller/controller.ts";
import {
  createDashboardCommands,
  type DashboardCommands,
} from "../../fleet/controller/dashboard-commands.ts";
import { type Dashboard, startDashboard } from "../../fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../fleet/controller/sqlite-store.ts";
import type { DeviceRecord, FleetStore } from "../../fleet/controller/store.ts";
import { type EmbeddedBroker, startEmbeddedBroker } from "../../fleet/embedded-broker.ts";
import { connectMqttOnce, type MqttConnection, parseBrokerUrl } from "../../fleet/mqtt-client.ts";
import { runJobCommand } from "../../fleet/operator/operations.ts";
import { createFleetRequester, type FleetRequester } from "../../fleet/operator/requester.ts";
import type { ReportMessage } from "../../fleet/protocol.ts";
import { type SigningKey, writeNewSigningKey } from "../../fleet/signing.ts";
import { describeRecordedAgreement } from "../../quant/gate.ts";
import { type Classifier, loadClassifier } from "../../runtime/classifier.ts";
import { type EvalResult, evaluate } from "../../runtime/evaluate.ts";
import { ORT_VERSION } from "../../runtime/ort-session.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import type { Command, CommandContext } from "../command.ts";
import { JSON_FLAG, openClassifier, THREADS_FLAG, threadsFlag } from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagInt, flagString } from "../parse.ts";
import { PACKAGE_ROOT, SHIPPED_DEV_TSV, SHIPPED_MODEL, SHIPPED_MODEL_DIR } from "../paths.ts";
import { createProgress, formatBytes, formatMs, formatPercent, renderTable } from "../render.ts";
import { listenForStop } from "../stop-signal.ts";
import { describeEvalAgreement } from "./eval.ts";

/** The shipped SST-2 training sample the demo seeds the agent's store with. */
export const SHIPPED_TRAIN_TSV: string = join(PACKAGE_ROOT, "calib/samples/sst2-train-4k.tsv");

/** The demo's fleet name (topics `quantd/v1/demo/demo-device/…`). */
export const DEMO_FLEET = "demo";
/** The demo's device name. */
export const DEMO_DEVICE = "demo-device";

/**
 * The recalibration command the demo sends: as `quantd fleet recalibrate
 * demo-device --samples 128`; the agent's defaults do the rest (held-out
 * samples sized from the gate, 30 benchmark runs with peak memory, the 99.5 %
 * agreement gate on its 95 % lower bound).
 */
export const DEMO_RECALIBRATION = { samples: 128 } as const;

/** Sentences the demo classifies: clear cases both ways and a hedged one. */
export const DEMO_SENTENCES: readonly string[] = [
  "a gripping , beautifully acted film that stays with you long after the credits roll .",
  "the plot is thin , the jokes fall flat and the ending drags on forever .",
  "one of the most delightful surprises of the year .",
  "an utterly forgettable sequel that nobody asked for .",
  "it 's not a great movie , but it has its moments .",
];

/** What the steps share and what the summary reports. */
export interface DemoState {
  threads: number;
  /** Evaluate only the first N dev sentences (all when undefined). */
  limit: number | undefined;
  classifier?: Classifier;
  loadMs?: number;
  evaluation?: EvalResult;
  evalWallMs?: number;
  /** `--broker`: an existing broker instead of the embedded one. */
  brokerUrl?: string;
  broker?: EmbeddedBroker;
  /** Temporary directory of the agent's state and socket and the controller's database (removed at the end). */
  agentDir?: string;
  agent?: Agent;
  socketPath?: string;
  fleetStore?: FleetStore;
  controller?: FleetController;
  dashboard?: Dashboard;
  /** The dashboard's actions, signed with the run's operator key. */
  dashboardCommands?: DashboardCommands;
  /** The operator key of this run (in the temporary directory) and its file, for `--key` with `--stay`. */
  operatorKey?: SigningKey;
  operatorKeyFile?: string;
  /** The operator's MQTT connection and requester (what `quantd fleet …` opens). */
  ops?: MqttConnection;
  requester?: FleetRequester;
  /** The device as the controller saw it once the job's report was in. */
  device?: DeviceRecord;
  /** The recalibration job's report, as the controller stored it. */
  report?: ReportMessage;
  jobWallMs?: number;
  /** The promoted int8 model file, when the job promoted one. */
  int8Path?: string;
  /** What the socket answered for {@link DEMO_SENTENCES}. */
  served?: { version: number; kind: string; sameAsFp32: number; n: number };
  /** int8 evaluated on the dev set against fp32 (`compare`), one sentence per run. */
  comparison?: EvalResult;
  /** Machine-readable results, keyed by step name (printed by `--json`). */
  results: Record<string, unknown>;
}

/** One step of the demo. */
export interface DemoStep {
  /** Short name, shown as `[i/n] name` and used as the key in `--json` output. */
  name: string;
  /** Runs the step; writes human lines through `say` (muted under `--json`). */
  run(state: DemoState, say: (line: string) => void): Promise<void>;
}

function shown(path: string): string {
  const rel = relative(PACKAGE_ROOT, path);
  return rel.startsWith("..") ? path : rel;
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new QuantdError("INTERNAL", `demo step order: ${what} is not ready`);
  return value;
}

/** Loads the shipped fp32 model, its tokenizer and labels. */
const loadStep: DemoStep = {
  name: "load",
  async run(state, say) {
    const t0 = performance.now();
    state.classifier = await openClassifier(SHIPPED_MODEL, { threads: String(state.threads) });
    state.loadMs = performance.now() - t0;
    const bytes = statSync(SHIPPED_MODEL).size;
    const labels = state.classifier.labels;
    say(`${shown(SHIPPED_MODEL)}: fp32, ${formatBytes(bytes)}, labels ${labels.join(", ")}`);
    const cores = cpus();
    const cpu = `${cores.length} × ${cores[0]?.model.trim() || "unknown CPU"} (${arch()})`;
    say(
      `loaded in ${formatMs(state.loadMs)}: onnxruntime ${ORT_VERSION}, ${state.threads} thread(s) on ${cpu}`,
    );
    state.results["load"] = {
      model: SHIPPED_MODEL,
      bytes,
      labels,
      loadMs: state.loadMs,
      onnxruntime: ORT_VERSION,
      cpu,
      threads: state.threads,
    };
  },
};

/** Classifies a few sentences. */
const classifyStep: DemoStep = {
  name: "classify",
  async run(state, say) {
    const classifier = need(state.classifier, "the model");
    const out = await classifier.classify(DEMO_SENTENCES);
    const rows = out.map((r, i) => [r.label, r.score.toFixed(4), DEMO_SENTENCES[i]!]);
    for (const line of renderTable(rows, ["left", "right", "left"])) say(line);
    state.results["classify"] = out.map((r, i) => ({
      text: DEMO_SENTENCES[i],
      label: r.label,
      score: r.score,
    }));
  },
};

/** Accuracy and per-sentence latency on the shipped SST-2 dev set, one sentence per run. */
const evaluateStep: DemoStep = {
  name: "evaluate",
  async run(state, say) {
    const classifier = need(state.classifier, "the model");
    const all = await readSamplesTsv(SHIPPED_DEV_TSV, { requireLabels: true, labels: classifier.labels });
    const samples = state.limit === undefined ? all : all.slice(0, state.limit);
    const progress = createProgress("evaluate");
    const t0 = performance.now();
    let r: EvalResult;
    try {
      // Batch 1: a board serves one request at a time, so per-sentence latency is the figure that matters.
      r = await evaluate(classifier, samples, {
        batchSize: 1,
        onProgress: (done, total) => progress.update(done, total),
      });
    } finally {
      progress.done();
    }
    const wallMs = performance.now() - t0;
    state.evaluation = r;
    state.evalWallMs = wallMs;
    const throughput = (r.n / wallMs) * 1000;
    say(`${shown(SHIPPED_DEV_TSV)}: ${r.n} labelled sentences, one per inference run`);
    const rows = [
      ["accuracy", r.accuracy === undefined ? "n/a" : formatPercent(r.accuracy)],
      ["latency p50", `${formatMs(r.latency.p50MsPerBatch)} per sentence (inference)`],
      ["latency p90", `${formatMs(r.latency.p90MsPerBatch)} per sentence (inference)`],
      ["throughput", `${throughput.toFixed(0)} sentences/s (tokenize + infer, 1 at a time)`],
    ];
    for (const line of renderTable(rows)) say(line);
    state.results["evaluate"] = {
      data: SHIPPED_DEV_TSV,
      n: r.n,
      accuracy: r.accuracy,
      latencyMsP50: r.latency.p50MsPerBatch,
      latencyMsP90: r.latency.p90MsPerBatch,
      throughputPerSec: throughput,
    };
  },
};

/** Starts the embedded MQTT 5 broker on a random loopback port, unless `--broker` names one. */
const brokerStep: DemoStep = {
  name: "broker",
  async run(state, say) {
    if (state.brokerUrl !== undefined) {
      say(`using the broker at ${state.brokerUrl} (--broker)`);
      state.results["broker"] = { url: state.brokerUrl, embedded: false };
      return;
    }
    state.broker = await startEmbeddedBroker();
    state.brokerUrl = state.broker.url;
    say(`embedded MQTT 5 broker (aedes, in this process, no authentication) on ${state.brokerUrl}`);
    state.results["broker"] = { url: state.brokerUrl, embedded: true };
  },
};

/** Starts the agent on a temporary state directory and socket, serving the fp32 model and joined to the fleet. */
const agentStep: DemoStep = {
  name: "agent",
  async run(state, say) {
    const broker = need(state.brokerUrl, "the broker");
    const dir = mkdtempSync(join(tmpdir(), "quantd-demo-"));
    state.agentDir = dir;
    // The operator key of this run (as `quantd fleet keygen` writes one): the agent trusts it and
    // runs only the commands it signs; the agent makes its own device key in its state directory.
    state.operatorKeyFile = join(dir, "operator.key");
    state.operatorKey = writeNewSigningKey(state.operatorKeyFile);
    // Otherwise env {}: the demo shows the shipped defaults, whatever QUANTD_* the shell holds.
    const config = loadAgentConfig({
      profile: { threads: state.threads, samplePool: { maxRows: 20_000, maxBytes: 8 * 1024 * 1024 } },
      defaultModel: SHIPPED_MODEL,
      env: { QUANTD_FLEET_OPERATOR_KEYS: state.operatorKey.publicKey },
      flags: {
        stateDir: join(dir, "state"),
        socket: join(dir, "quantd.sock"),
        broker,
        device: DEMO_DEVICE,
        fleet: DEMO_FLEET,
      },
    });
    const t0 = performance.now();
    const agent = await startAgent(config);
    state.agent = agent;
    state.socketPath = config.socketPath;
    const connected = (await agent.fleet?.waitConnected(10_000)) ?? false;
    if (!connected) {
      throw new QuantdError("FLEET_UNAVAILABLE", `the agent could not connect to the broker at ${broker}`);
    }
    const v = agent.registry.activeVersion();
    say(`state directory ${dir}: SQLite store, model registry, job runner`);
    say(
      `serving ${v?.kind} model version ${v?.id} on ${config.socketPath} (started in ${formatMs(performance.now() - t0)})`,
    );
    say(`fleet link: device ${DEMO_DEVICE} of fleet ${DEMO_FLEET}, connected to ${broker}`);
    state.results["agent"] = {
      stateDir: config.stateDir,
      socket: config.socketPath,
      version: v?.id,
      kind: v?.kind,
      fleet: DEMO_FLEET,
      device: DEMO_DEVICE,
    };
  },
};

/** Polls `get` until it returns a value or `ms` have passed (then the last answer, undefined). */
async function until<T>(get: () => Promise<T | undefined>, ms: number): Promise<T | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v !== undefined || Date.now() > end) return v;
    await Bun.sleep(50);
  }
}

/** Starts the fleet controller (SQLite in the temporary directory, dashboard on a free loopback port). */
const controllerStep: DemoStep = {
  name: "controller",
  async run(state, say) {
    const broker = need(state.brokerUrl, "the broker");
    const dir = need(state.agentDir, "the temporary directory");
    const dbPath = join(dir, "fleet.db");
    state.fleetStore = await openSqliteFleetStore(dbPath);
    // Enrol the device's key before subscribing, as `quantd fleet enroll` would: the controller stores
    // only what an enrolled device signed (its retained status included).
    const deviceKey = need(state.agent?.fleet?.publicKey, "the agent's device key");
    await state.fleetStore.enroll(DEMO_FLEET, DEMO_DEVICE, deviceKey, Date.now());
    const suffix = crypto.randomUUID().slice(0, 8);
    state.controller = startController({
      broker,
      store: state.fleetStore,
      clientId: `quantd-demo-controller-${suffix}`,
      // One fleet, one run: no shared subscription, no session left on the broker.
      transient: { fleet: DEMO_FLEET },
    });
    // The dashboard acts as the operator does: its commands are signed with the run's operator key.
    state.dashboardCommands = createDashboardCommands({
      connect: () => connectMqttOnce({ url: broker, clientId: `quantd-demo-dashboard-${suffix}` }),
      signer: need(state.operatorKey, "the operator key"),
    });
    state.dashboard = startDashboard(state.controller, "127.0.0.1:0", { commands: state.dashboardCommands });
    if (!(await state.controller.waitReady(10_000))) {
      throw new QuantdError("FLEET_UNAVAILABLE", `the controller could not subscribe at ${broker}`);
    }
    // The operator's side, as `quantd fleet recalibrate` connects: its own client and reply topic.
    state.ops = await connectMqttOnce({ url: broker, clientId: `quantd-demo-cli-${suffix}` });
    state.requester = await createFleetRequester(state.ops, DEMO_FLEET, {
      signer: need(state.operatorKey, "the operator key"),
    });
    const store = state.fleetStore;
    const device = await until(async () => {
      const d = await store.device(DEMO_FLEET, DEMO_DEVICE);
      return d?.online === true ? d : undefined;
    }, 10_000);
    if (device === undefined) {
      throw new QuantdError("FLEET_UNAVAILABLE", `${DEMO_DEVICE} did not show up online at the controller`);
    }
    say(`SQLite ${dbPath}, subscribed to quantd/v1/${DEMO_FLEET}/+/#; dashboard ${state.dashboard.url}`);
    say(
      `${DEMO_DEVICE} enrolled with device key ${deviceKey}; commands signed with ${state.operatorKeyFile}`,
    );
    say(
      `${DEMO_DEVICE}: online (retained status), agent ${device.agentVersion ?? "?"}, ` +
        `${device.model?.kind ?? "no"} model version ${device.model?.version ?? "-"}`,
    );
    state.results["controller"] = {
      db: dbPath,
      dashboard: state.dashboard.url,
      device: { online: device.online, model: device.model },
    };
  },
};

/** Fills the agent's sample pool from the shipped training sample (as `quantd collect` or live capture would). */
const seedStep: DemoStep = {
  name: "seed",
  async run(state, say) {
    const agent = need(state.agent, "the agent");
    const rows = await readSamplesTsv(SHIPPED_TRAIN_TSV);
    const r = agent.store.samples.add(
      rows.map((row) => ({ text: row.text, label: row.label ?? null })),
      { source: "file" },
    );
    const stats = agent.store.samples.stats();
    say(
      `${shown(SHIPPED_TRAIN_TSV)}: ${rows.length} sentences → pool of ${stats.rows} (${r.duplicates} duplicates dropped), ${formatBytes(stats.bytes)} of text`,
    );
    state.results["seed"] = { file: SHIPPED_TRAIN_TSV, read: rows.length, ...r, pool: stats.rows };
  },
};

function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function asResult(report: ReportMessage | undefined): RecalibrationResult | undefined {
  const r = report?.result;
  return typeof r === "object" && r !== null && "decision" in r ? (r as RecalibrationResult) : undefined;
}

/** The device's report as the controller stored it, as table lines. */
function describeReport(device: DeviceRecord | undefined, report: ReportMessage): string[] {
  const r = asResult(report);
  const rows: string[][] = [["state", report.state]];
  if (report.error !== undefined) rows.push(["error", `${report.error.code}: ${report.error.message}`]);
  if (device?.model !== null && device?.model !== undefined) {
    rows.push(["serving", `${device.model.kind} model version ${device.model.version} (retained status)`]);
  }
  if (r !== undefined) {
    rows.push(["decision", `${r.decision}${r.reasons.length > 0 ? `: ${r.reasons.join("; ")}` : ""}`]);
    rows.push([
      "samples",
      `${r.samples.calibration} calibration + ${r.samples.validation} held-out from a pool of ${r.samples.pool}`,
    ]);
    const b = r.bench;
    if (b !== undefined) {
      rows.push([
        "size",
        `${r.active.kind ?? "active"} ${formatBytes(b.activeBytes)} → ${r.candidate?.kind ?? "int8"} ${formatBytes(b.candidateBytes)} ` +
          `(${(b.activeBytes / b.candidateBytes).toFixed(1)}× smaller)`,
      ]);
      rows.push([
        "latency p50",
        `${r.active.kind ?? "active"} ${formatMs(b.activeP50Ms)} → ${r.candidate?.kind ?? "int8"} ${formatMs(b.candidateP50Ms)} ` +
          `(${describeLatencyRatio(b.latencyRatio)}; batch ${b.shape.batch} × ${b.shape.seq} tokens, ${b.runs} runs each)`,
      ]);
      if (b.activePeakRssBytes !== undefined && b.candidatePeakRssBytes !== undefined) {
        rows.push([
          "peak RSS",
          `${r.active.kind ?? "active"} ${formatBytes(b.activePeakRssBytes)} → ${r.candidate?.kind ?? "int8"} ` +
            `${formatBytes(b.candidatePeakRssBytes)} (a process loading each model)`,
        ]);
      }
    }
    const v = r.validation;
    if (v !== undefined) {
      rows.push(["agreement", `int8 = fp32 on ${describeRecordedAgreement(v) ?? "-"}`]);
      if (v.accuracyReference !== undefined && v.accuracyCandidate !== undefined) {
        rows.push([
          "accuracy",
          `fp32 ${formatPercent(v.accuracyReference)} → int8 ${formatPercent(v.accuracyCandidate)} (held-out labels)`,
        ]);
      }
    }
    rows.push([
      "stages",
      Object.entries(r.stageMs)
        .map(([k, ms]) => `${k} ${formatMs(ms)}`)
        .join(", "),
    ]);
  }
  return renderTable(rows).map((l) => `  ${l}`);
}

/**
 * The controller's side sends a recalibration over MQTT (as `quantd fleet
 * recalibrate demo-device --wait`): the agent queues it for its job runner,
 * which picks, calibrates, quantizes, validates, benchmarks and promotes;
 * progress and the report come back over MQTT, the report through the
 * agent's outbox into the controller's store.
 */
const recalibrateStep: DemoStep = {
  name: "recalibrate",
  async run(state, say) {
    const requester = need(state.requester, "the requester");
    const store = need(state.fleetStore, "the controller's store");
    const t0 = performance.now();
    let last = "";
    say(
      `command recalibrate → ${DEMO_DEVICE} on quantd/v1/${DEMO_FLEET}/${DEMO_DEVICE}/cmd/recalibrate ` +
        `(MQTT 5 request/response, ${DEMO_RECALIBRATION.samples} calibration samples)`,
    );
    const [outcome] = await runJobCommand(requester, [DEMO_DEVICE], "recalibrate", DEMO_RECALIBRATION, {
      wait: true,
      waitTimeoutMs: 600_000,
      onProgress: (_device, jobState, stage) => {
        const what = stage === null || jobState !== "IN_PROGRESS" ? jobState : `${jobState} ${stage}`;
        if (what === last) return;
        last = what;
        say(`  ${formatMs(performance.now() - t0).padStart(8)}  ${what}`);
      },
    });
    state.jobWallMs = performance.now() - t0;
    if (outcome === undefined || outcome.report === undefined) {
      throw new QuantdError(
        "FLEET_UNAVAILABLE",
        `no report from ${DEMO_DEVICE}: ${outcome?.state ?? "no outcome"} ${outcome?.error?.message ?? ""}`.trim(),
      );
    }
    // The controller stores the same report from its own subscription; the retained status follows the swap.
    const wanted = outcome.report;
    const kind = asResult(wanted)?.candidate?.kind;
    const stored = await until(async () => {
      const d = await store.device(DEMO_FLEET, DEMO_DEVICE);
      const swapped = wanted.state !== "SUCCEEDED" || kind === undefined || d?.model?.kind === kind;
      return d?.lastReport?.id === wanted.id && swapped ? d : undefined;
    }, 10_000);
    state.device = stored ?? (await store.device(DEMO_FLEET, DEMO_DEVICE));
    state.report = stored?.lastReport ?? wanted;
    const reports = await store.reports(DEMO_FLEET, DEMO_DEVICE);
    const stats = need(state.controller, "the controller").stats();
    say(`job ${outcome.id}: ${outcome.state} in ${(state.jobWallMs / 1000).toFixed(1)} s`);
    say(
      stored === undefined
        ? "the controller has not stored the report (printed as the requester received it):"
        : `${DEMO_DEVICE}'s report as the controller stored it (${plural(reports.length, "report")}, ` +
            `${plural(stats.duplicateReports, "duplicate")} received):`,
    );
    for (const line of describeReport(state.device, state.report)) say(line);
    const agent = need(state.agent, "the agent");
    const active = agent.store.models.active();
    if (outcome.state === "SUCCEEDED" && active !== undefined && active.kind !== "fp32")
      state.int8Path = active.path;
    state.results["recalibrate"] = {
      via: "mqtt",
      job: outcome.id,
      state: outcome.state,
      error: outcome.report.error ?? null,
      wallMs: state.jobWallMs,
      result: outcome.report.result ?? null,
      stored: stored !== undefined,
      device: state.device === undefined ? null : { online: state.device.online, model: state.device.model },
      reports: reports.length,
      duplicateReports: stats.duplicateReports,
    };
  },
};

/** Classifies the demo sentences through the agent's Unix socket (`POST /v1/classify`). */
const serveStep: DemoStep = {
  name: "serve",
  async run(state, say) {
    const socket = need(state.socketPath, "the socket");
    const res = await fetch("http://localhost/v1/classify", {
      unix: socket,
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ texts: DEMO_SENTENCES }),
    });
    const body = (await res.json()) as {
      results?: { label: string; score: number }[];
      model?: { version: number; kind: string };
      error?: { code: string; message: string };
    };
    if (!res.ok || body.results === undefined || body.model === undefined) {
      throw new QuantdError(
        "INTERNAL",
        `the agent answered ${res.status}: ${body.error?.message ?? "no results"}`,
      );
    }
    const fp32 = (state.results["classify"] as { label: string }[] | undefined) ?? [];
    const rows = body.results.map((r, i) => [r.label, r.score.toFixed(4), DEMO_SENTENCES[i]!]);
    for (const line of renderTable(rows, ["left", "right", "left"])) say(line);
    const same = body.results.filter((r, i) => fp32[i]?.label === r.label).length;
    say(
      `answered by ${body.model.kind} model version ${body.model.version} over ${socket}; ${same}/${body.results.length} labels as fp32`,
    );
    state.served = {
      version: body.model.version,
      kind: body.model.kind,
      sameAsFp32: same,
      n: body.results.length,
    };
    state.results["serve"] = { ...state.served, results: body.results };
  },
};

/** The promoted int8 model against fp32 on the dev set, on the same sentences, one per run. */
const compareStep: DemoStep = {
  name: "compare",
  async run(state, say) {
    const fp32 = need(state.classifier, "the model");
    if (state.int8Path === undefined) {
      say("no int8 model was promoted: nothing to compare (see the recalibration above)");
      return;
    }
    const int8 = await loadClassifier(state.int8Path, {
      tokenizerDir: SHIPPED_MODEL_DIR,
      session: { intraOpThreads: state.threads },
    });
    try {
      const all = await readSamplesTsv(SHIPPED_DEV_TSV, { requireLabels: true, labels: fp32.labels });
      const samples = state.limit === undefined ? all : all.slice(0, state.limit);
      const progress = createProgress("compare");
      let r: EvalResult;
      try {
        r = await evaluate(int8, samples, {
          batchSize: 1,
          compare: fp32,
          onProgress: (done, total) => progress.update(done, total),
        });
      } finally {
        progress.done();
      }
      state.comparison = r;
      const rows = [
        ["", "fp32", "int8"],
        ["size", formatBytes(statSync(SHIPPED_MODEL).size), formatBytes(statSync(state.int8Path).size)],
        ["accuracy", pct(r.compareAccuracy), pct(r.accuracy)],
        ["latency p50", ms(r.compareLatency?.p50MsPerBatch), ms(r.latency.p50MsPerBatch)],
        ["latency p90", ms(r.compareLatency?.p90MsPerBatch), ms(r.latency.p90MsPerBatch)],
      ];
      say(`${shown(SHIPPED_DEV_TSV)}: ${r.n} sentences, both models on the same inputs, one per run`);
      for (const line of renderTable(rows, ["left", "right", "right"])) say(line);
      say(
        `agreement: int8 picks the fp32 class on ${devAgreement(r)} of them (${r.disagreements ?? 0} differ)`,
      );
      state.results["compare"] = {
        n: r.n,
        fp32: {
          bytes: statSync(SHIPPED_MODEL).size,
          accuracy: r.compareAccuracy,
          latencyMsP50: r.compareLatency?.p50MsPerBatch,
          latencyMsP90: r.compareLatency?.p90MsPerBatch,
        },
        int8: {
          bytes: statSync(state.int8Path).size,
          accuracy: r.accuracy,
          latencyMsP50: r.latency.p50MsPerBatch,
          latencyMsP90: r.latency.p90MsPerBatch,
        },
        agreement: r.agreement,
      };
    } finally {
      await int8.release();
    }
  },
};

/** The dev set's int8/fp32 agreement with its bound, as quantd prints every agreement. */
function devAgreement(r: EvalResult): string {
  return describeEvalAgreement(r) ?? "-";
}

function pct(x: number | undefined): string {
  return x === undefined ? "n/a" : formatPercent(x);
}

function ms(x: number | undefined): string {
  return x === undefined ? "n/a" : formatMs(x);
}

/** The steps, in order. */
export const DEMO_STEPS: readonly DemoStep[] = [
  loadStep,
  classifyStep,
  evaluateStep,
  brokerStep,
  agentStep,
  seedStep,
  controllerStep,
  recalibrateStep,
  serveStep,
  compareStep,
];

/** The recalibration's lines of the summary: what the job did and int8 against fp32. */
function int8Summary(state: DemoState): string[][] {
  const rows: string[][] = [];
  const report = state.report;
  if (report === undefined) return rows;
  const r = asResult(report);
  const secs = state.jobWallMs === undefined ? "" : ` in ${(state.jobWallMs / 1000).toFixed(1)} s`;
  const d = state.device;
  if (d !== undefined) {
    rows.push([
      "fleet",
      `${d.device} ${d.online ? "online" : "offline"} at the controller via ${state.broker === undefined ? state.brokerUrl : "the embedded broker"}, ` +
        `serving ${d.model?.kind ?? "?"} version ${d.model?.version ?? "?"}`,
    ]);
  }
  if (report.state !== "SUCCEEDED" || r === undefined) {
    rows.push([
      "recalibration",
      `${report.state}${secs} over MQTT: ${report.error?.code ?? ""} ${report.error?.message ?? ""}`.trim(),
    ]);
    return rows;
  }
  rows.push([
    "recalibration",
    `${report.state}${secs} over MQTT: ${r.samples.calibration} calibration + ${r.samples.validation} held-out store samples, ` +
      `${r.candidate?.kind} promoted as version ${r.candidate?.version}`,
  ]);
  rows.push([
    "stages",
    Object.entries(r.stageMs)
      .map(([k, v]) => `${k} ${formatMs(v)}`)
      .join(", "),
  ]);
  if (r.validation !== undefined) {
    rows.push(["held-out gate", `int8 = fp32 on ${describeRecordedAgreement(r.validation) ?? "-"}`]);
  }
  const c = state.comparison;
  if (state.int8Path !== undefined) {
    const fp32Bytes = statSync(SHIPPED_MODEL).size;
    const int8Bytes = statSync(state.int8Path).size;
    rows.push([
      "size",
      `fp32 ${formatBytes(fp32Bytes)} → int8 ${formatBytes(int8Bytes)} (${(fp32Bytes / int8Bytes).toFixed(1)}× smaller)`,
    ]);
  }
  if (c !== undefined) {
    rows.push([
      "dev accuracy",
      `fp32 ${pct(c.compareAccuracy)} → int8 ${pct(c.accuracy)} on ${c.n} sentences`,
    ]);
    rows.push(["dev agreement", `int8 = fp32 on ${devAgreement(c)}`]);
    const f = c.compareLatency?.p50MsPerBatch;
    const i = c.latency.p50MsPerBatch;
    rows.push([
      "dev latency",
      `p50 fp32 ${ms(f)} → int8 ${ms(i)}${f !== undefined ? ` (${(f / i).toFixed(2)}× faster)` : ""}, ` +
        `p90 ${ms(c.compareLatency?.p90MsPerBatch)} → ${ms(c.latency.p90MsPerBatch)} per sentence`,
    ]);
  }
  if (state.served !== undefined) {
    rows.push([
      "socket",
      `${state.served.n} sentences served by ${state.served.kind} version ${state.served.version}, ${state.served.sameAsFp32}/${state.served.n} labels as fp32`,
    ]);
  }
  return rows;
}

function summary(state: DemoState): string[] {
  const e = state.evaluation;
  const rows: string[][] = [["model", `${shown(SHIPPED_MODEL)} (fp32)`]];
  if (e !== undefined) {
    if (e.accuracy !== undefined)
      rows.push(["accuracy", `${formatPercent(e.accuracy)} on ${e.n} SST-2 dev sentences (fp32)`]);
    // With the int8 comparison, its latency rows (both models on the same inputs) replace fp32's alone.
    if (state.comparison === undefined) {
      rows.push([
        "latency",
        `p50 ${formatMs(e.latency.p50MsPerBatch)}, p90 ${formatMs(e.latency.p90MsPerBatch)}`,
      ]);
      if (state.evalWallMs !== undefined) {
        rows.push(["throughput", `${((e.n / state.evalWallMs) * 1000).toFixed(0)} sentences/s`]);
      }
    }
  }
  rows.push(...int8Summary(state));
  return renderTable(rows).map((l) => `  ${l}`);
}

async function runDemo(ctx: CommandContext, state: DemoState, json: boolean): Promise<void> {
  const say = json ? () => {} : (line: string) => ctx.out(`      ${line}`);
  if (!json) {
    ctx.out(
      "quantd demo: the shipped fp32 BERT-Mini SST-2 sentiment model on this machine, then the fleet loop: " +
        "an MQTT broker, the agent on a Unix socket, the controller sending it a recalibration over MQTT, " +
        "the device's int8 report, and int8 serving over the socket\n",
    );
  }
  for (const [i, step] of DEMO_STEPS.entries()) {
    if (!json) ctx.out(`[${i + 1}/${DEMO_STEPS.length}] ${step.name}`);
    await step.run(state, say);
  }
  if (json) ctx.out(JSON.stringify({ steps: DEMO_STEPS.map((s) => s.name), ...state.results }));
  else {
    ctx.out("\nSummary");
    for (const line of summary(state)) ctx.out(line);
  }
}

/** Keeps everything running until SIGINT or SIGTERM, saying where to look (on stderr: stdout may be JSON). */
async function stay(ctx: CommandContext, state: DemoState): Promise<void> {
  ctx.err("");
  ctx.err(`still running (--stay): dashboard ${state.dashboard?.url ?? "-"}`);
  ctx.err(
    `  its buttons (recalibrate, quantize-dynamic, rollback, bench) sign with ${state.operatorKeyFile ?? "-"}`,
  );
  ctx.err(
    `  socket:  curl --unix-socket ${state.socketPath} -H 'content-type: application/json' http://localhost/v1/classify -d '{"texts":["a fine film"]}'`,
  );
  ctx.err(`  fleet:   quantd fleet devices --broker ${state.brokerUrl} --fleet ${DEMO_FLEET}`);
  ctx.err(
    `  command: quantd fleet report ${DEMO_DEVICE} --broker ${state.brokerUrl} --fleet ${DEMO_FLEET} --key ${state.operatorKeyFile ?? "-"}`,
  );
  const stopped = listenForStop();
  ctx.err("Ctrl-C (SIGINT) or SIGTERM stops it and removes the temporary directory");
  await stopped;
}

/** Stops what the demo started, last started first; each part stops even when another fails to. */
async function shutdown(state: DemoState): Promise<void> {
  const steps: (() => Promise<void> | void)[] = [
    () => state.requester?.close(),
    () => state.ops?.close(),
    // The agent publishes its retained `offline` status before the controller goes.
    () => state.agent?.stop(),
    () => state.dashboard?.stop(),
    () => state.dashboardCommands?.close(),
    () => state.controller?.stop(),
    () => state.fleetStore?.close(),
    () => state.broker?.close(),
    () => state.classifier?.release(),
  ];
  for (const step of steps) {
    try {
      await step();
    } catch {
      // Shutting down: the error that ended the demo (if any) is the one to show.
    }
  }
  if (state.agentDir !== undefined) rmSync(state.agentDir, { recursive: true, force: true });
}

/** The `demo` command. */
export const demoCommand: Command = {
  name: "demo",
  summary:
    "run quantd on the shipped BERT-Mini SST-2 model: classify, evaluate, then the fleet loop (broker, agent, controller, recalibration over MQTT), serve int8, compare",
  usage: "[--threads N] [--limit N] [--broker URL] [--stay] [--json]",
  description:
    "Loads the fp32 BERT-Mini SST-2 model shipped in calib/models/sst2-bert-mini, classifies a few " +
    "sentences, and evaluates it on the 872 labelled SST-2 dev sentences in calib/samples/sst2-dev.tsv, " +
    "one sentence per inference run (as a board serves requests): accuracy, latency per sentence " +
    "(p50, p90) and throughput. Then runs the fleet loop on this machine: an MQTT 5 broker embedded in " +
    "the process on a free loopback port (unless --broker names one), the agent on a temporary state " +
    "directory and Unix socket joined to fleet demo as device demo-device, its sample store seeded with " +
    "calib/samples/sst2-train-4k.tsv, and the fleet controller (SQLite in the temporary directory, " +
    "dashboard on a free loopback port). The controller's side sends a recalibrate command over MQTT, as " +
    "`quantd fleet recalibrate demo-device --wait` does; the agent's job runner picks disjoint calibration " +
    "and held-out samples from the store, calibrates, quantizes, validates against fp32, benchmarks against " +
    "the serving fp32 model and promotes with a hot swap, and the device's report (model, size, latency, " +
    "memory, agreement, accuracy) comes back over MQTT into the controller's store and is printed. Then the " +
    "sentences are classified again through the socket, by int8, and int8 is compared with fp32 on the dev " +
    "sentences. Everything is stopped and the temporary directory removed at the end. Needs nothing outside " +
    "the repository.\n\n" +
    "With --stay, the broker, agent, controller and dashboard keep running after the summary until " +
    "SIGINT (Ctrl-C) or SIGTERM, to look at the dashboard, classify over the socket or send `quantd fleet` " +
    "commands; the lines saying where go to stderr.\n\n" +
    "With --json, prints one object with each step's results.",
  flags: [
    THREADS_FLAG,
    {
      name: "limit",
      type: "string",
      value: "N",
      description: "evaluate only the first N dev sentences",
      default: "all 872",
    },
    {
      name: "broker",
      type: "string",
      value: "URL",
      description: "use this MQTT 5 broker (mqtt://host:port, no login) instead of the embedded one",
      default: "an embedded broker on 127.0.0.1:<free port>",
    },
    {
      name: "stay",
      type: "boolean",
      description: "keep the broker, agent, controller and dashboard running until Ctrl-C",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    expectNoPositionals(ctx.positionals);
    const state: DemoState = {
      threads: threadsFlag(ctx.flags),
      limit: flagInt(ctx.flags, "limit", { min: 1 }),
      results: {},
    };
    const broker = flagString(ctx.flags, "broker");
    // A bad URL fails before any step runs, not after the fp32 evaluation.
    if (broker !== undefined) state.brokerUrl = parseBrokerUrl(broker).href.replace(/\/$/, "");
    try {
      await runDemo(ctx, state, flagBool(ctx.flags, "json"));
      if (flagBool(ctx.flags, "stay")) await stay(ctx, state);
    } finally {
      await shutdown(state);
    }
    return 0;
  },
};
