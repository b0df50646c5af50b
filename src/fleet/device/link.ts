/**
 * The agent's fleet link: connects to the broker as the device (persistent
 * session, retained `online` status, retained `offline` Last Will with a Will
 * Delay), takes commands on `cmd/{name}` with MQTT 5 request/response (only
 * those signed by a trusted operator key, never the same id twice), signs
 * everything it publishes with the device key, runs
 * job commands one at a time through the store's job table, and sends
 * progress and reports through the SQLite outbox so nothing acknowledged is
 * lost. Telemetry is QoS 0, sampled periodically and sent in batches.
 */
import { QuantdError } from "../../errors.ts";
import type { FinalJobState, Job, JobStore } from "../../store/jobs.ts";
import type { OutboxStats, OutboxStore } from "../../store/outbox.ts";
import { type FleetConfig, type ResolvedFleetConfig, resolveFleetConfig } from "./config.ts";
import type { SqlDatabase } from "../../store/sql.ts";
import { createCommandLedger } from "./command-ledger.ts";
import type { AgentIdentity, FleetCommandHandler, FleetJobContext } from "./handler.ts";
import { connectMqtt, type MqttConnection, type MqttMessage } from "../mqtt-client.ts";
import { createOutboxPublisher, type OutboxPublisher, type PublisherStats } from "./outbox-publisher.ts";
import {
  type CommandEnvelope,
  type CommandReply,
  type DeviceTopics,
  deviceTopics,
  encodeJson,
  encodeReport,
  type FleetCommand,
  JOB_COMMANDS,
  type JobMessage,
  MAX_COMMAND_BYTES,
  MAX_COMMAND_TTL_MS,
  type OutboxFigures,
  parseCommand,
  parseEnvelope,
  parseTopic,
  type ReportMessage,
  type StatusMessage,
  type TelemetryMessage,
  type TelemetrySample,
} from "../protocol.ts";
import {
  createKeyring,
  generateSigningKey,
  PUB_PROPERTY,
  type SignatureProblem,
  type SigningKey,
} from "../signing.ts";

/** Replies kept in memory for repeated command ids (job commands are also deduplicated by the job table). */
const REPLY_CACHE_SIZE = 1024;

/** Default longest run of a job the link runs itself. */
export const DEFAULT_LINK_JOB_TIMEOUT_MS = 10 * 60_000;

/** How often a running link job looks for `quantd job cancel`. */
const CANCEL_POLL_MS = 250;

/** What the link needs from the agent. */
export interface FleetLinkDeps {
  /** The agent's store: jobs (the fleet's job queue) and outbox (store-and-forward). */
  store: { jobs: JobStore; outbox: OutboxStore; db: SqlDatabase };
  handler: FleetCommandHandler;
  /** Agent and model versions for the retained `online` status (read at every connect). */
  status: () => AgentIdentity;
  /** One telemetry sample (request rate, latency percentiles, RSS, CPU temperature); `at` is added. */
  telemetry?: () => Omit<TelemetrySample, "at">;
  /**
   * The device's own key: every message it publishes is signed with it, and
   * the controller stores only what an enrolled device key signed.
   * @defaultValue a new key for this link only (its public half is {@link FleetLink.publicKey})
   */
  deviceKey?: SigningKey;
  /**
   * Longest a job the link runs (bench, rollback) may take; it then ends
   * TIMED_OUT. @defaultValue {@link DEFAULT_LINK_JOB_TIMEOUT_MS}
   */
  jobTimeoutMs?: number;
  /** @defaultValue Date.now */
  now?: () => number;
  log?: (line: string) => void;
  /** Connects to the broker; tests may pass options through. @defaultValue {@link connectMqtt} */
  connect?: typeof connectMqtt;
  /**
   * The agent's own job runner, for the job types it runs (its recalibration
   * job, say). The link then only queues those jobs and wakes the runner; the
   * agent passes every change of a job to {@link FleetLink.jobUpdated}. Such a
   * runner queues each job's report in the outbox itself, so that it is kept
   * when no link runs (another process ran the job); the link sends it from
   * there and never reports these jobs again. Other job commands run in the
   * link through the handler's job methods, and the link reports them.
   */
  runner?: ExternalJobRunner;
}

/** A job runner outside the link that shares the store's job table. */
export interface ExternalJobRunner {
  /** Job types the runner claims; the link never claims these. */
  readonly types: readonly string[];
  /**
   * The job for a command, or undefined to let the link run it with the handler.
   * The returned type must be one of {@link ExternalJobRunner.types}.
   */
  jobFor(cmd: FleetCommand): { type: string; params: Record<string, unknown> } | undefined;
  /** Makes the runner look at the queue now rather than at its next poll. */
  wake(): void;
}

/** Figures of a running link. */
export interface FleetLinkStats {
  connected: boolean;
  connects: number;
  commands: number;
  /** Commands refused before anything ran: unsigned, unknown key, bad signature, replayed or expired. */
  unauthorized: number;
  outbox: OutboxStats;
  publisher: PublisherStats;
  telemetrySent: number;
}

/** A running fleet link. */
export interface FleetLink {
  readonly config: ResolvedFleetConfig;
  /** The device key's public half, for enrolment at the controller. */
  readonly publicKey: string;
  readonly topics: DeviceTopics;
  readonly connected: boolean;
  /** Resolves once connected (true) or after `timeoutMs` (false). */
  waitConnected(timeoutMs: number): Promise<boolean>;
  /**
   * Queues a QoS 1 report through the outbox (for results the agent produces
   * outside fleet commands). Its `id` is what subscribers dedupe on.
   *
   * @throws REQUEST_INVALID when the id is empty
   */
  report(report: Omit<ReportMessage, "device">): void;
  /**
   * Publishes a job's change (its `jobs/{id}` message), and with it what the
   * outbox holds (the report the runner queued when the job ended). For jobs
   * run by an {@link ExternalJobRunner}.
   */
  jobUpdated(job: Job): void;
  /**
   * Republishes the retained `online` status now. The link also does so by
   * itself when `status()` changes (a model swap), checked every telemetry interval.
   */
  refreshStatus(): Promise<void>;
  /** Resolves true once every queued QoS 1 message is acknowledged, false after `timeoutMs`. */
  flushed(timeoutMs: number): Promise<boolean>;
  stats(): FleetLinkStats;
  /**
   * Stops: aborts running jobs (they stay IN_PROGRESS and run again next
   * start), publishes a retained `offline` status, waits up to `flushMs` for
   * the outbox, and disconnects.
   */
  stop(options?: { flushMs?: number }): Promise<void>;
}

function outboxFigures(s: OutboxStats): OutboxFigures {
  return { queued: s.count, bytes: s.bytes, dropped: s.dropped };
}

function runHandler(handler: FleetCommandHandler, cmd: FleetCommand, ctx: FleetJobContext): Promise<unknown> {
  switch (cmd.name) {
    case "recalibrate":
      return handler.recalibrate(cmd.params, ctx);
    case "quantize-dynamic":
      return handler.quantizeDynamic(cmd.params, ctx);
    case "bench":
      return handler.bench(cmd.params, ctx);
    case "rollback":
      return handler.rollback(cmd.params, ctx);
    case "release":
      // Downloading and recalibrating is the agent's job runner's (ExternalJobRunner.jobFor).
      return Promise.reject(new QuantdError("INTERNAL", "release runs in the agent's job runner"));
    case "status":
    case "set-config":
    case "collect":
      return Promise.reject(new QuantdError("INTERNAL", `${cmd.name} is not a job command`));
  }
}

function unauthorizedCommand(problem: SignatureProblem, trusted: number): QuantdError {
  const why =
    trusted === 0
      ? "this device trusts no operator key (fleet.operatorKeys); every command is refused"
      : problem === "unsigned"
        ? "the command is not signed"
        : problem === "unknown-key"
          ? "the command is signed by a key this device does not trust"
          : "the command's signature does not match";
  return new QuantdError("COMMAND_UNAUTHORIZED", why, { details: { reason: problem } });
}

/**
 * A signed command must say when it expires, and not too far ahead: the
 * replay ledger keeps each id until then.
 *
 * @throws COMMAND_EXPIRED when due; COMMAND_UNAUTHORIZED without `expiresAt` or beyond {@link MAX_COMMAND_TTL_MS}
 */
function checkExpiry(env: CommandEnvelope, at: number): void {
  if (env.expiresAt === undefined) {
    throw new QuantdError("COMMAND_UNAUTHORIZED", `command ${env.id} has no expiresAt`, {
      details: { id: env.id, reason: "no-expiry" },
    });
  }
  if (env.expiresAt <= at) {
    throw new QuantdError(
      "COMMAND_EXPIRED",
      `command ${env.id} expired at ${new Date(env.expiresAt).toISOString()}`,
      { details: { id: env.id, expiresAt: env.expiresAt } },
    );
  }
  if (env.expiresAt - at > MAX_COMMAND_TTL_MS) {
    throw new QuantdError(
      "COMMAND_UNAUTHORIZED",
      `command ${env.id} expires more than ${MAX_COMMAND_TTL_MS / 3_600_000} h ahead`,
      { details: { id: env.id, reason: "expiry-too-far" } },
    );
  }
}

function finalState(err: QuantdError): FinalJobState {
  if (err.code === "GATE_NOT_MET") return "REJECTED";
  if (err.code === "JOB_TIMED_OUT") return "TIMED_OUT";
  return "FAILED";
}

/**
 * Starts the link and returns at once; it connects (and reconnects) in the
 * background, so an agent boots without a network.
 *
 * @throws CONFIG_INVALID on a bad broker URL, fleet or device name, or unreadable certificate file
 */
export function createFleetLink(config: FleetConfig, deps: FleetLinkDeps): FleetLink {
  const resolved = resolveFleetConfig(config);
  const topics = deviceTopics(resolved.fleet, resolved.device);
  const now = deps.now ?? Date.now;
  const log = deps.log ?? (() => {});
  const { jobs, outbox } = deps.store;
  const operators = createKeyring(resolved.operatorKeys);
  const deviceKey = deps.deviceKey ?? generateSigningKey().key;
  const seen = createCommandLedger(deps.store.db, now);
  const jobTimeoutMs = deps.jobTimeoutMs ?? DEFAULT_LINK_JOB_TIMEOUT_MS;
  // Everything the device publishes is signed; the status also carries the public key (trust on first use).
  const signed = (topic: string, payload: Uint8Array): Record<string, string> =>
    deviceKey.sign(topic, payload);
  const statusProps = (topic: string, payload: Uint8Array): Record<string, string> => ({
    ...signed(topic, payload),
    [PUB_PROPERTY]: deviceKey.publicKey,
  });
  const will: StatusMessage = {
    state: "offline",
    fleet: resolved.fleet,
    device: resolved.device,
    at: null,
    reason: "will",
  };
  const conn: MqttConnection = (deps.connect ?? connectMqtt)({
    ...resolved.connect,
    will: {
      topic: topics.status,
      payload: JSON.stringify(will),
      qos: 1,
      retain: true,
      delaySec: resolved.willDelaySec,
      userProperties: statusProps(topics.status, encodeJson(will)),
    },
  });
  const publisher: OutboxPublisher = createOutboxPublisher(conn, outbox, { log, sign: signed });
  const abort = new AbortController();
  const replies = new Map<string, CommandReply>();
  const pending = new Map<string, Promise<CommandReply>>();
  let stopped = false;
  let running: Job | undefined;
  let connects = 0;
  let commands = 0;
  let unauthorized = 0;
  let telemetrySent = 0;
  let samples: TelemetrySample[] = [];

  const statusMessage = (): StatusMessage => {
    const id = deps.status();
    return {
      state: "online",
      fleet: resolved.fleet,
      device: resolved.device,
      at: now(),
      agentVersion: id.agentVersion,
      model: id.model,
      outbox: outboxFigures(outbox.stats()),
    };
  };
  // What the last retained status said about the agent; a change (a model swap) republishes it.
  let publishedIdentity = "";
  const identity = (): string => {
    const id = deps.status();
    return JSON.stringify([id.agentVersion, id.model]);
  };
  const publishStatus = async (): Promise<void> => {
    if (!conn.connected) return;
    try {
      publishedIdentity = identity();
      const body = encodeJson(statusMessage());
      await conn.publish(topics.status, body, {
        qos: 1,
        retain: true,
        userProperties: statusProps(topics.status, body),
      });
    } catch (err) {
      log(`fleet: status not published: ${QuantdError.from(err).toLine()}`);
    }
  };

  const publishJob = (job: Job): void => {
    const msg: JobMessage = {
      id: job.id,
      type: job.type,
      state: job.state,
      stage: job.stage,
      progress: job.progress,
      at: now(),
    };
    publisher.enqueue(topics.job(job.id), encodeJson(msg));
  };

  const publishReport = (done: Job): void => {
    const report: ReportMessage = {
      id: done.id,
      device: resolved.device,
      jobId: done.id,
      type: done.type,
      state: done.state,
      startedAt: done.startedAt,
      finishedAt: done.finishedAt,
    };
    if (done.result !== null) report.result = done.result;
    if (done.error !== null) report.error = done.error;
    publisher.enqueue(topics.report, encodeReport(report));
  };

  const external = new Set(deps.runner?.types ?? []);
  // The link runs fleet job commands nobody else claims; the type check keeps
  // it from taking a job another runner owns (claimNext takes any type).
  const ownsType = (type: string): boolean =>
    !external.has(type) && (JOB_COMMANDS as readonly string[]).includes(type);

  const runJob = async (job: Job): Promise<void> => {
    // The job stops on the link's stop, on `quantd job cancel` and at its timeout, whichever is first.
    const jobAbort = new AbortController();
    const stop = (reason: QuantdError): void => {
      if (!jobAbort.signal.aborted) jobAbort.abort(reason);
    };
    const onLinkStop = (): void => stop(new QuantdError("JOB_INTERRUPTED", "the fleet link is stopping"));
    abort.signal.addEventListener("abort", onLinkStop);
    const timeout = setTimeout(
      () => stop(new QuantdError("JOB_TIMED_OUT", `job ${job.id} ran longer than ${jobTimeoutMs} ms`)),
      jobTimeoutMs,
    );
    const cancelPoll = setInterval(() => {
      if (jobs.get(job.id)?.cancelRequested === true) {
        stop(new QuantdError("JOB_CANCELLED", `job ${job.id} was cancelled`));
      }
    }, CANCEL_POLL_MS);
    const aborted = new Promise<never>((_, reject) => {
      jobAbort.signal.addEventListener("abort", () => reject(jobAbort.signal.reason));
    });
    aborted.catch(() => {});
    const ctx: FleetJobContext = {
      jobId: job.id,
      signal: jobAbort.signal,
      progress: (stage, fraction) => {
        if (stopped) return;
        const update: { stage: string; progress?: number } = { stage };
        if (fraction !== undefined) update.progress = Math.min(1, Math.max(0, fraction));
        publishJob(jobs.update(job.id, update));
      },
    };
    let result: unknown;
    let error: QuantdError | undefined;
    try {
      const cmd = parseCommand(job.type, job.params);
      // A handler that does not look at the signal still ends the job on time.
      result = await Promise.race([runHandler(deps.handler, cmd, ctx), aborted]);
    } catch (err) {
      error = QuantdError.from(jobAbort.signal.aborted ? jobAbort.signal.reason : err, "INTERNAL");
    } finally {
      clearTimeout(timeout);
      clearInterval(cancelPoll);
      abort.signal.removeEventListener("abort", onLinkStop);
    }
    // Stopping mid-job leaves it IN_PROGRESS: the next start requeues and reruns it.
    if (stopped) return;
    const done =
      error === undefined
        ? jobs.finish(job.id, "SUCCEEDED", { result: result ?? null })
        : jobs.finish(job.id, finalState(error), { error: error.toJSON() });
    publishJob(done);
    publishReport(done);
  };

  const pump = (): void => {
    if (stopped || running !== undefined) return;
    let job: Job | undefined;
    try {
      const oldest = jobs.list({ state: "QUEUED", limit: 10_000 }).at(-1);
      if (oldest === undefined || !ownsType(oldest.type)) return;
      job = jobs.claimNext();
    } catch (err) {
      log(`fleet: cannot claim a job: ${QuantdError.from(err).toLine()}`);
      return;
    }
    if (job === undefined) return;
    running = job;
    publishJob(job);
    const current = job;
    runJob(current)
      .catch((err: unknown) => log(`fleet: job ${current.id}: ${QuantdError.from(err).toLine()}`))
      .finally(() => {
        running = undefined;
        pump();
      });
  };

  const execute = async (cmd: FleetCommand, id: string): Promise<unknown> => {
    if (JOB_COMMANDS.includes(cmd.name)) {
      // The job table is the idempotency record that survives restarts.
      const delegated = deps.runner?.jobFor(cmd);
      if (delegated !== undefined) {
        if (!external.has(delegated.type)) {
          throw new QuantdError(
            "INTERNAL",
            `job type ${delegated.type} is not one the agent's runner claims`,
          );
        }
        const job = jobs.create({ id, type: delegated.type, params: delegated.params });
        publishJob(job);
        deps.runner?.wake();
        return { jobId: job.id, state: job.state };
      }
      const job = jobs.create({ id, type: cmd.name, params: { ...cmd.params } });
      queueMicrotask(pump);
      return { jobId: job.id, state: job.state };
    }
    switch (cmd.name) {
      case "status":
        return {
          ...statusMessage(),
          ...(await deps.handler.status()),
          running: running === undefined ? null : running.id,
          lastJob: jobs.list({ limit: 1 })[0] ?? null,
        };
      case "set-config":
        return await deps.handler.setConfig(cmd.params);
      case "collect":
        return await deps.handler.collect(cmd.params);
      case "recalibrate":
      case "quantize-dynamic":
      case "bench":
      case "rollback":
      case "release":
        throw new QuantdError("INTERNAL", "unreachable: job command");
    }
  };

  const answer = async (name: string, msg: MqttMessage): Promise<CommandReply> => {
    let id: string | null = null;
    try {
      if (msg.payload.byteLength > MAX_COMMAND_BYTES) {
        throw new QuantdError(
          "REQUEST_TOO_LARGE",
          `command body of ${msg.payload.byteLength} bytes exceeds ${MAX_COMMAND_BYTES}`,
          { details: { bytes: msg.payload.byteLength, max: MAX_COMMAND_BYTES } },
        );
      }
      // Nothing is parsed, looked up or run before the signature holds: the
      // topic it covers binds the command to this fleet, device and name.
      const problem = operators.check(msg.topic, msg.payload, msg.userProperties);
      if (problem !== undefined) throw unauthorizedCommand(problem, operators.size);
      const env = parseEnvelope(msg.payload);
      id = env.id;
      // A retry of a signed command (same id) gets the same answer; it never runs twice.
      const cached = replies.get(env.id);
      if (cached !== undefined) return cached;
      const inFlight = pending.get(env.id);
      if (inFlight !== undefined) return await inFlight;
      // An already-known job id answers from the table even when the cache was lost (restart).
      const known = jobs.get(env.id);
      if (known !== undefined)
        return { id, command: name, ok: true, result: { jobId: known.id, state: known.state } };
      checkExpiry(env, now());
      if (!seen.claim(env.id, env.expiresAt as number)) {
        throw new QuantdError(
          "COMMAND_UNAUTHORIZED",
          `command ${env.id} was already run; ids are never reused`,
          {
            details: { id: env.id, reason: "replayed" },
          },
        );
      }
      const cmd = parseCommand(name, env.params);
      const envId = env.id;
      const work = execute(cmd, envId).then(
        (result): CommandReply => ({ id: envId, command: name, ok: true, result }),
        (err: unknown): CommandReply => ({
          id: envId,
          command: name,
          ok: false,
          error: QuantdError.from(err).toJSON(),
        }),
      );
      pending.set(envId, work);
      const reply = await work;
      pending.delete(envId);
      replies.set(envId, reply);
      if (replies.size > REPLY_CACHE_SIZE) {
        const oldest = replies.keys().next().value;
        if (oldest !== undefined) replies.delete(oldest);
      }
      return reply;
    } catch (err) {
      const e = QuantdError.from(err, "COMMAND_INVALID");
      if (e.code === "COMMAND_UNAUTHORIZED" || e.code === "COMMAND_EXPIRED") unauthorized++;
      return { id, command: name, ok: false, error: e.toJSON() };
    }
  };

  const onCommand = async (name: string, msg: MqttMessage): Promise<void> => {
    commands++;
    const reply = await answer(name, msg);
    if (!reply.ok) log(`fleet: command ${name} ${reply.id ?? "(no id)"} refused: ${reply.error.code}`);
    if (msg.responseTopic === undefined) return;
    // A requester must not be able to make the device publish anywhere (its status, another device's
    // commands): replies go only under the device's own reply/ level, as createFleetRequester asks.
    const replyLevel = parseTopic(msg.responseTopic);
    if (
      replyLevel?.kind !== "reply" ||
      replyLevel.fleet !== resolved.fleet ||
      replyLevel.device !== resolved.device
    ) {
      log(
        `fleet: command ${name}: response topic ${msg.responseTopic} is outside ${topics.base}/reply/; not answered`,
      );
      return;
    }
    // Replies skip the outbox: the requester waits with a timeout and retries with the same id.
    const body = encodeJson(reply);
    const opts: Parameters<MqttConnection["publish"]>[2] = {
      qos: 1,
      userProperties: signed(msg.responseTopic, body),
    };
    if (msg.correlationData !== undefined) opts.correlationData = msg.correlationData;
    try {
      await conn.publish(msg.responseTopic, body, opts);
    } catch (err) {
      log(`fleet: reply to ${msg.responseTopic} not sent: ${QuantdError.from(err).toLine()}`);
    }
  };

  conn.onMessage((msg) => {
    const t = parseTopic(msg.topic);
    if (t === undefined || t.kind !== "cmd" || t.device !== resolved.device || t.fleet !== resolved.fleet)
      return;
    void onCommand(t.name, msg);
  });
  conn.onConnect(() => {
    connects++;
    void publishStatus();
    // On every CONNACK, session present or not: a broker restored from its
    // persistence file may hold the session without every subscription.
    conn.subscribe([topics.cmdFilter], { qos: 1 }).catch((err: unknown) => {
      log(`fleet: cannot subscribe to commands: ${QuantdError.from(err).toLine()}`);
    });
  });
  conn.onError((err) => log(`fleet: ${err.toLine()}`));

  // Jobs a previous process left running go back to the queue and run again.
  for (const job of jobs.interrupted()) {
    if (ownsType(job.type)) jobs.requeue(job.id);
  }
  queueMicrotask(pump);
  // Others (the agent's jobs) may write to the outbox directly; pick their rows up.
  const drainTimer = setInterval(() => {
    publisher.drain();
    pump();
  }, 1000);
  drainTimer.unref?.();

  const telemetryTimer = setInterval(() => {
    if (conn.connected && !stopped && identity() !== publishedIdentity) void publishStatus();
    if (deps.telemetry === undefined) return;
    try {
      samples.push({ ...deps.telemetry(), at: now() });
    } catch (err) {
      log(`fleet: telemetry sample failed: ${QuantdError.from(err).toLine()}`);
    }
    if (samples.length < resolved.telemetryBatch) return;
    const batch = samples;
    samples = [];
    if (!conn.connected) return;
    const msg: TelemetryMessage = {
      device: resolved.device,
      at: now(),
      samples: batch,
      outbox: outboxFigures(outbox.stats()),
    };
    telemetrySent++;
    const body = encodeJson(msg);
    conn
      .publish(topics.telemetry, body, { qos: 0, userProperties: signed(topics.telemetry, body) })
      .catch(() => {});
  }, resolved.telemetryIntervalMs);
  telemetryTimer.unref?.();

  return {
    config: resolved,
    topics,
    publicKey: deviceKey.publicKey,
    get connected() {
      return conn.connected;
    },
    waitConnected(timeoutMs) {
      if (conn.connected) return Promise.resolve(true);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          off();
          resolve(false);
        }, timeoutMs);
        const off = conn.onConnect(() => {
          clearTimeout(timer);
          off();
          resolve(true);
        });
      });
    },
    report(report) {
      if (typeof report.id !== "string" || report.id === "") {
        throw new QuantdError("REQUEST_INVALID", "a report needs an id for subscribers to dedupe on");
      }
      publisher.enqueue(topics.report, encodeReport({ ...report, device: resolved.device }));
    },
    jobUpdated(job) {
      if (stopped) return;
      try {
        // No report here: the runner queued it before telling us, and this enqueue drains the
        // outbox, report included. (The link used to queue a second report of its own, so each
        // recalibration reached subscribers twice and they deduped it by id.)
        publishJob(job);
      } catch (err) {
        log(`fleet: job ${job.id} update not queued: ${QuantdError.from(err).toLine()}`);
      }
    },
    refreshStatus: publishStatus,
    flushed: (timeoutMs) => publisher.flushed(timeoutMs),
    stats: () => ({
      connected: conn.connected,
      connects,
      commands,
      unauthorized,
      outbox: outbox.stats(),
      publisher: publisher.stats(),
      telemetrySent,
    }),
    async stop(options = {}) {
      if (stopped) return;
      stopped = true;
      clearInterval(telemetryTimer);
      clearInterval(drainTimer);
      abort.abort();
      await publisher.flushed(options.flushMs ?? 2000);
      publisher.stop();
      if (conn.connected) {
        const bye = encodeJson({
          ...statusMessage(),
          state: "offline",
          reason: "shutdown",
        } satisfies StatusMessage);
        await conn
          .publish(topics.status, bye, {
            qos: 1,
            retain: true,
            userProperties: statusProps(topics.status, bye),
          })
          .catch(() => {});
      }
      await conn.close();
    },
  };
}
