/**
 * `quantd job`: queues the agent's jobs and shows them. `recalibrate` queues a
 * recalibration in the store of the state directory; a running agent's job
 * runner picks it up. With `--wait` it waits for the end — running the job in
 * this process when no runner holds the state directory's lock.
 */
import { QUANTIZE_DYNAMIC_JOB, RECALIBRATE_JOB, type RecalibrationResult } from "../../agent/recalibrate.ts";
import {
  DEFAULT_RECALIBRATE_SAMPLES,
  DEFAULT_RECALIBRATE_VALIDATION,
  parseRecalibrateParams,
} from "../../agent/recalibrate-params.ts";
import { RELEASE_JOB } from "../../agent/release.ts";
import { describeLatencyRatio } from "../../bench/compare.ts";
import { type AgentServices, createAgentServices, jobsDir } from "../../agent/services.ts";
import { QuantdError, type QuantdErrorJSON } from "../../errors.ts";
import { isFinished } from "../../jobs/handler.ts";
import { acquireRunnerLock, runnerLockHolder } from "../../jobs/runner-lock.ts";
import { DEFAULT_GATE_AGREEMENT, describeRecordedAgreement, parseGateThreshold } from "../../quant/gate.ts";
import { CALIBRATION_METHODS } from "../../quant/methods.ts";
import { defaultQuantizeOptions } from "../../quant/plan.ts";
import type { Job } from "../../store/jobs.ts";
import { databasePath, openStore, type Store } from "../../store/store.ts";
import type { Command, CommandContext } from "../command.ts";
import { AGENT_STATE_FLAGS, agentConfigFromFlags, openAgentStore } from "../agent-state.ts";
import { JSON_FLAG } from "../model-flags.ts";
import { flagBool, flagInt, flagNumber, flagString, usageError } from "../parse.ts";
import { formatBytes, formatMs, formatPercent, renderTable } from "../render.ts";

const POLL_MS = 500;
/** Job types whose result is a recalibration's (a release ends in one too). */
const RECALIBRATION_TYPES: ReadonlySet<string> = new Set([
  RECALIBRATE_JOB,
  QUANTIZE_DYNAMIC_JOB,
  RELEASE_JOB,
]);

function jobLine(j: Job): string {
  const pct = `${Math.round(j.progress * 100)} %`;
  const err = j.error === null ? "" : `  ${j.error.code}: ${j.error.message}`;
  return `${j.id}  ${j.type}  ${j.state}  ${j.stage ?? "-"}  ${pct}${err}`;
}

/**
 * The version a recalibration registered: serving when promoted; a rejected
 * one is named as a candidate, not as the model version in service.
 */
function candidateVersionRow(
  decision: RecalibrationResult["decision"],
  c: { version?: number; kind: string },
): string[] {
  if (decision === "promoted") return ["model version", `${c.version} (${c.kind}), serving`];
  return ["candidate version", `${c.version} (${c.kind}), rejected: not serving`];
}

/** Human lines for a finished recalibration. */
export function describeRecalibration(job: {
  id: string;
  state: string;
  error: QuantdErrorJSON | null;
  result: unknown;
}): string[] {
  const lines = [`job ${job.id}: ${job.state}${job.error === null ? "" : ` (${job.error.code})`}`];
  const r = job.result as RecalibrationResult | null;
  if (r === null || typeof r !== "object") {
    if (job.error !== null) lines.push(`  ${job.error.message}`);
    return lines;
  }
  const rows: string[][] = [["decision", r.decision]];
  for (const reason of r.reasons) rows.push(["reason", reason]);
  rows.push([
    "samples",
    `${r.samples.calibration} calibration + ${r.samples.validation} validation (pool ${r.samples.pool})`,
  ]);
  const v = r.validation;
  if (v !== undefined) {
    rows.push(["agreement", describeRecordedAgreement(v) ?? "-"]);
    // Length drift and split notes of the quantizer's report: what a reader should not miss.
    for (const w of r.report?.warnings ?? []) rows.push(["warning", w]);
    if (v.accuracyReference !== undefined && v.accuracyCandidate !== undefined) {
      rows.push([
        "accuracy",
        `fp32 ${formatPercent(v.accuracyReference)}, int8 ${formatPercent(v.accuracyCandidate)}`,
      ]);
    }
  }
  const b = r.bench;
  if (b !== undefined) {
    rows.push([
      "latency p50",
      `active ${formatMs(b.activeP50Ms)}, candidate ${formatMs(b.candidateP50Ms)} (${describeLatencyRatio(b.latencyRatio)}, b${b.shape.batch}×s${b.shape.seq})`,
    ]);
    rows.push(["size", `active ${formatBytes(b.activeBytes)}, candidate ${formatBytes(b.candidateBytes)}`]);
    if (b.memoryRatio !== undefined) rows.push(["peak RSS ratio", b.memoryRatio.toFixed(2)]);
  }
  if (r.candidate?.version !== undefined) rows.push(candidateVersionRow(r.decision, r.candidate));
  rows.push([
    "stages",
    Object.entries(r.stageMs)
      .map(([k, ms]) => `${k} ${formatMs(ms)}`)
      .join(", "),
  ]);
  for (const l of renderTable(rows)) lines.push(`  ${l}`);
  return lines;
}

function recalibrateParams(ctx: CommandContext): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  const samples = flagInt(ctx.flags, "samples", { min: 1, max: 100_000 });
  const validation = flagInt(ctx.flags, "validation-samples", { min: 1, max: 100_000 });
  const method = flagString(ctx.flags, "method");
  // In % (or a fraction), as quantize --gate and the fleet's rollout gate take it.
  const gatePercent = flagNumber(ctx.flags, "gate", { min: 0, max: 100 });
  const gate = gatePercent === undefined ? undefined : parseGateThreshold(gatePercent);
  const seed = flagInt(ctx.flags, "seed", {});
  if (samples !== undefined) raw["samples"] = samples;
  if (validation !== undefined) raw["validationSamples"] = validation;
  if (method !== undefined) raw["method"] = method;
  if (gate !== undefined) raw["gate"] = gate;
  if (seed !== undefined) raw["seed"] = seed;
  const decideOn = flagString(ctx.flags, "gate-on");
  if (decideOn !== undefined) raw["decideOn"] = decideOn;
  const ignoreMargin = flagNumber(ctx.flags, "ignore-margin", { min: 0, max: 1 });
  if (ignoreMargin !== undefined) raw["ignoreMargin"] = ignoreMargin;
  const mode = flagString(ctx.flags, "mode");
  if (mode !== undefined) raw["mode"] = mode;
  const prefer = flagString(ctx.flags, "prefer");
  if (prefer !== undefined) raw["prefer"] = prefer;
  // Validate now: a bad value should fail here, not later in the agent.
  parseRecalibrateParams(raw);
  return raw;
}

/**
 * Polls the store until the job ends (the runner of another process runs it),
 * printing stage changes.
 *
 * @throws JOB_INTERRUPTED when that runner goes away before the job ends
 */
async function pollUntilDone(
  store: Store,
  stateDir: string,
  id: string,
  say: (l: string) => void,
): Promise<Job> {
  let last = "";
  for (;;) {
    const j = store.jobs.require(id);
    const now = `${j.state} ${j.stage ?? ""}`;
    if (now !== last) {
      say(
        `job ${id}: ${j.state}${j.stage === null ? "" : ` at ${j.stage}`} (${Math.round(j.progress * 100)} %)`,
      );
      last = now;
    }
    if (isFinished(j)) return j;
    if (runnerLockHolder(jobsDir(stateDir)) === undefined) {
      // Read once more: the runner may have finished the job and exited between the two reads.
      const again = store.jobs.require(id);
      if (isFinished(again)) return again;
      throw new QuantdError(
        "JOB_INTERRUPTED",
        `the job runner stopped before job ${id} ended (${again.state} at ${again.stage ?? "start"}); ` +
          `it resumes when the agent starts again, or run: quantd job recalibrate --id ${id} --wait`,
        { details: { id, state: again.state, stage: again.stage } },
      );
    }
    await Bun.sleep(POLL_MS);
  }
}

/**
 * Runs queued jobs in this process until `id` has ended, with the agent's own
 * services (the same registry, job engine and fleet identity as `quantd agent`).
 */
async function runHere(services: AgentServices, id: string, say: (l: string) => void): Promise<Job> {
  const { config, store, engine, registry } = services;
  const release = acquireRunnerLock(jobsDir(config.stateDir));
  const onSignal = (): void => {
    say("interrupted: stopping the job at its next stage boundary (it resumes at the next run)");
    void engine.stop();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    // The store's active version (or the base model, registered as the first version) is what a candidate must beat.
    await registry.start(config.model, false);
    engine.recover();
    for (;;) {
      const j = store.jobs.require(id);
      if (isFinished(j)) return j;
      const done = await engine.runNext();
      if (done === undefined) {
        const still = store.jobs.require(id);
        if (isFinished(still)) return still;
        throw new QuantdError(
          "JOB_INTERRUPTED",
          `job ${id} did not finish here (${still.state} at ${still.stage ?? "start"}); it resumes at the next run`,
        );
      }
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await engine.stop();
    release();
  }
}

async function recalibrate(ctx: CommandContext, json: boolean): Promise<number> {
  const params = recalibrateParams(ctx);
  const wait = flagBool(ctx.flags, "wait");
  const config = agentConfigFromFlags(ctx.flags);
  const say = json || !wait ? () => undefined : ctx.err;
  const services = createAgentServices(config, {
    openStore: () => openAgentStore(config),
    log: say,
    onUpdate: (j) => {
      if (j.state === "IN_PROGRESS" && j.stage !== null)
        say(`job ${j.id}: ${j.stage} (${Math.round(j.progress * 100)} %)`);
    },
  });
  const store = await services.open();
  try {
    const id = flagString(ctx.flags, "id");
    const job = store.jobs.create({ type: RECALIBRATE_JOB, params, ...(id !== undefined ? { id } : {}) });
    const holder = runnerLockHolder(jobsDir(config.stateDir));
    if (!wait) {
      if (json) ctx.out(JSON.stringify({ job, runner: holder ?? null }));
      else {
        ctx.out(`queued job ${job.id} (${job.type})`);
        ctx.out(
          holder !== undefined
            ? `the job runner (pid ${holder}) will run it; follow it with: quantd job show ${job.id}`
            : "no agent runs jobs in this state directory now: start `quantd agent`, or add --wait to run it here",
        );
      }
      return 0;
    }
    if (holder !== undefined) say(`job ${job.id} queued; the runner of pid ${holder} runs it`);
    const done =
      holder !== undefined
        ? await pollUntilDone(store, config.stateDir, job.id, say)
        : await runHere(services, job.id, say);
    if (json) ctx.out(JSON.stringify({ job: done }));
    else for (const l of describeRecalibration(done)) ctx.out(l);
    return done.state === "SUCCEEDED" ? 0 : 1;
  } finally {
    await services.close();
  }
}

/** The `job` command. */
export const jobCommand: Command = {
  name: "job",
  summary: "queue a recalibration for the agent, or list, show and cancel jobs",
  actions: ["recalibrate", "list", "show", "cancel"],
  usage:
    "recalibrate [--samples N] [--validation-samples N] [--method M] [--mode static|dynamic|auto] [--prefer latency|size] [--gate G] [--gate-on bound|point] [--seed N] [--id ID] [--wait] | list | show ID | cancel ID  [--state-dir DIR] [--config FILE] [--json]",
  description:
    "`recalibrate` queues a recalibration in the state directory's store: pick disjoint calibration and " +
    "validation samples from the sample pool (fill it with `quantd collect` or live capture), calibrate and " +
    "quantize the fp32 model the agent serves (or the one the int8 version it serves was quantized from), validate against fp32 (agreement gate, sensitivity fallback), benchmark the " +
    "candidate against the active model, then promote it (atomic write, verification, hot swap) or reject it " +
    "with the reasons. One job runs at a time; others wait in the queue. A running `quantd agent` runs it; " +
    "with --wait this command waits for the end, and runs the job itself when no agent holds the state " +
    "directory. A job interrupted by a crash or power cut resumes from its last intact stage at the next " +
    "start (after 3 interruptions it fails with JOB_INTERRUPTED).\n\n" +
    "`list` shows recent jobs, `show ID` one job with its result, `cancel ID` cancels a queued job at once " +
    "and a running one at its next stage boundary (it ends FAILED with JOB_CANCELLED); cancelling a job that " +
    "already ended fails with STATE_CONFLICT. ID may be any unique prefix of a job id, as in git.\n\n" +
    "Exit code with --wait: 0 when promoted, 1 when rejected or failed.",
  flags: [
    ...AGENT_STATE_FLAGS,
    {
      name: "samples",
      type: "string",
      value: "N",
      description: "calibration samples",
      default: String(DEFAULT_RECALIBRATE_SAMPLES),
    },
    {
      name: "validation-samples",
      type: "string",
      value: "N",
      description:
        "held-out validation samples (sized from the gate: enough that one flip still certifies it)",
      default: String(DEFAULT_RECALIBRATE_VALIDATION),
    },
    {
      name: "method",
      type: "string",
      value: "M",
      description: `calibration method: ${CALIBRATION_METHODS.join(", ")}`,
      default: defaultQuantizeOptions("static").method,
    },
    {
      name: "gate",
      type: "string",
      value: "G",
      description: "minimum top-1 agreement with fp32, in % (or a fraction)",
      default: String(DEFAULT_GATE_AGREEMENT * 100),
    },
    {
      name: "gate-on",
      type: "string",
      value: "WHAT",
      description: "what must clear --gate: bound (the agreement's 95 % lower confidence bound) or point",
      default: "bound",
    },
    {
      name: "ignore-margin",
      type: "string",
      value: "MARGIN",
      description: "leave near-ties (fp32 top-2 softmax margin below MARGIN) out of the gate",
    },
    {
      name: "mode",
      type: "string",
      value: "MODE",
      description:
        "static, dynamic, or auto (every int8 form that can be fastest on this board, timed here; the winner and why go to the board profile quantd device shows, with whether it beats fp32, is within the latency ratio of it, or fp32 keeps serving)",
      default: "static",
    },
    {
      name: "prefer",
      type: "string",
      value: "WHAT",
      description:
        "a candidate slower than the serving model: latency rejects it (where no int8 form beats fp32, fp32 keeps serving), size serves it when smaller",
      default: "config quantize.prefer, else latency",
    },
    { name: "seed", type: "string", value: "N", description: "seed of the sample pick", default: "1" },
    {
      name: "id",
      type: "string",
      value: "ID",
      description: "job id (queuing the same id again queues nothing)",
    },
    {
      name: "wait",
      type: "boolean",
      description: "wait for the end (run the job here when no agent runs it)",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    const [action, arg, ...rest] = ctx.positionals;
    const json = flagBool(ctx.flags, "json");
    if (rest.length > 0) throw usageError(`unexpected argument ${rest[0]}`);
    switch (action) {
      case "recalibrate":
        if (arg !== undefined) throw usageError(`unexpected argument ${arg}`);
        return recalibrate(ctx, json);
      case "list":
      case "show":
      case "cancel": {
        if (action === "list" && arg !== undefined) throw usageError(`unexpected argument ${arg}`);
        if (action !== "list" && arg === undefined) throw usageError(`quantd job ${action} needs a job id`);
        const config = agentConfigFromFlags(ctx.flags);
        const store = await openStore(databasePath(config.stateDir));
        try {
          if (action === "list") {
            const jobs = store.jobs.list({ limit: 50 });
            if (json) ctx.out(JSON.stringify({ jobs }));
            else if (jobs.length === 0) ctx.out("no jobs");
            else for (const j of jobs) ctx.out(jobLine(j));
            return 0;
          }
          const found = store.jobs.resolve(arg!);
          if (action === "cancel" && isFinished(found)) {
            throw new QuantdError(
              "STATE_CONFLICT",
              `job ${found.id} already ended ${found.state}; there is nothing to cancel`,
              { details: { id: found.id, state: found.state } },
            );
          }
          const job = action === "show" ? found : store.jobs.cancel(found.id);
          if (json) ctx.out(JSON.stringify({ job }));
          else if (action === "cancel") {
            ctx.out(
              job.state === "IN_PROGRESS"
                ? `job ${job.id} is running: it stops at its next stage boundary`
                : `job ${job.id} cancelled before it started`,
            );
          } else {
            ctx.out(jobLine(job));
            if (isFinished(job) && RECALIBRATION_TYPES.has(job.type))
              for (const l of describeRecalibration(job)) ctx.out(l);
          }
          return 0;
        } finally {
          store.close();
        }
      }
      case undefined:
        throw usageError("quantd job needs an action: recalibrate, list, show ID or cancel ID");
      default:
        throw usageError(`unknown job action ${action}: recalibrate, list, show ID or cancel ID`);
    }
  },
};
