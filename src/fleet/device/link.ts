/**
 * The agent's fleet link: connects to the broker as the device (persistent
 * session, retained `online` status, retained `offline` Last Will with a Will
 * Delay), takes commands on `cmd/{name}` with MQTT 5 request/response (only
 * those signed by a trusted operator key, never the same id twice: see
 * command-gate.ts), answers each through the handler of its command family
 * (`handlers/`: jobs, status, settings), signs everything it publishes with
 * the device key, and sends job progress and reports through the SQLite
 * outbox so nothing acknowledged is lost. Telemetry is QoS 0, sampled
 * periodically and sent in batches (presence.ts).
 *
 * Job commands become jobs in the store's table, run one at a time by a job
 * engine: the agent's (which runs every job type, and tells the link of each
 * change through {@link FleetLink.jobUpdated}), or, for a link given none, one
 * of its own over the handler's job methods.
 */
import { QuantdError } from "../../errors.ts";
import { JobEngine } from "../../jobs/engine.ts";
import type { Job, JobStore } from "../../store/jobs.ts";
import type { OutboxStats, OutboxStore } from "../../store/outbox.ts";
import type { SqlDatabase } from "../../store/sql.ts";
import { connectMqtt, type MqttConnection, type MqttMessage } from "../mqtt-client.ts";
import {
  type CommandName,
  type CommandReply,
  type DeviceTopics,
  deviceTopics,
  encodeJson,
  encodeReport,
  type FleetCommand,
  jobMessage,
  parseTopic,
  type ReportMessage,
  type TelemetrySample,
} from "../protocol.ts";
import { createKeyring, generateSigningKey, type SigningKey } from "../signing.ts";
import { CommandGate } from "./command-gate.ts";
import { createCommandLedger } from "./command-ledger.ts";
import { type FleetConfig, type ResolvedFleetConfig, resolveFleetConfig } from "./config.ts";
import type { AgentIdentity, FleetCommandHandler } from "./handler.ts";
import type { CommandContext, CommandFamilyHandler } from "./handlers/context.ts";
import { handleJobCommand } from "./handlers/jobs.ts";
import { handleSettingsCommand } from "./handlers/settings.ts";
import { handleStatusCommand } from "./handlers/status.ts";
import { commandJobHandlers, jobReporter } from "./jobs.ts";
import { createOutboxPublisher, type OutboxPublisher, type PublisherStats } from "./outbox-publisher.ts";
import { DevicePresence } from "./presence.ts";

/** Default longest run of a job in a link's own engine. */
export const DEFAULT_LINK_JOB_TIMEOUT_MS = 10 * 60_000;
/** How often the link sends what others wrote to the outbox. */
const DRAIN_MS = 1000;

/** The handler of each command, by family. */
const COMMAND_FAMILIES: Readonly<Record<CommandName, CommandFamilyHandler>> = {
  recalibrate: handleJobCommand,
  "quantize-dynamic": handleJobCommand,
  bench: handleJobCommand,
  rollback: handleJobCommand,
  release: handleJobCommand,
  status: handleStatusCommand,
  "set-config": handleSettingsCommand,
  collect: handleSettingsCommand,
};

/** What the link needs from the agent. */
export interface FleetLinkDeps {
  /** The agent's store: jobs (the fleet's job queue) and outbox (store-and-forward). */
  store: { jobs: JobStore; outbox: OutboxStore; db: SqlDatabase };
  /** Answers status, set-config and collect; its job methods run jobs only in a link given no `engine`. */
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
   * The agent's job engine, which runs every job command's job and reports
   * it (its `report` hook queues the report in the outbox, whoever runs the
   * job); the agent passes each change of a job to {@link FleetLink.jobUpdated}.
   * Without one, the link runs the handler's job methods in an engine of its
   * own (no work directories, no lock) and reports them itself.
   */
  engine?: JobEngine;
  /**
   * Longest a job of the link's own engine may take; it then ends TIMED_OUT.
   * @defaultValue {@link DEFAULT_LINK_JOB_TIMEOUT_MS}
   */
  jobTimeoutMs?: number;
  /** @defaultValue Date.now */
  now?: () => number;
  log?: (line: string) => void;
  /** Connects to the broker; tests may pass options through. @defaultValue {@link connectMqtt} */
  connect?: typeof connectMqtt;
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
   * outbox holds (the report the engine queued when the job ended). For jobs
   * run by the agent's engine ({@link FleetLinkDeps.engine}).
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
   * Stops: stops its own engine (a running job goes back to the queue and
   * runs again next start), publishes a retained `offline` status, waits up to `flushMs` for
   * the outbox, and disconnects.
   */
  stop(options?: { flushMs?: number }): Promise<void>;
}

/** A link's engine when it is given none: the handler's job methods, reported by the link. */
function ownEngine(deps: FleetLinkDeps, report: (job: Job) => void, onUpdate: (job: Job) => void): JobEngine {
  return new JobEngine({
    jobs: deps.store.jobs,
    handlers: commandJobHandlers(deps.handler),
    timeoutMs: deps.jobTimeoutMs ?? DEFAULT_LINK_JOB_TIMEOUT_MS,
    pollMs: DRAIN_MS,
    report,
    onUpdate,
    ...(deps.log === undefined ? {} : { log: deps.log }),
  });
}

/** The {@link FleetLink}: wiring of connection, presence, command gate, command families and jobs. */
class DeviceLink implements FleetLink {
  readonly config: ResolvedFleetConfig;
  readonly topics: DeviceTopics;
  readonly publicKey: string;
  readonly #deps: FleetLinkDeps;
  readonly #now: () => number;
  readonly #log: (line: string) => void;
  readonly #presence: DevicePresence;
  readonly #conn: MqttConnection;
  readonly #publisher: OutboxPublisher;
  readonly #gate: CommandGate;
  readonly #engine: JobEngine;
  /** Whether the engine is the link's own (started and stopped with it). */
  readonly #ownsEngine: boolean;
  readonly #timers: ReturnType<typeof setInterval>[] = [];
  #stopped = false;
  #connects = 0;
  #commands = 0;

  constructor(config: FleetConfig, deps: FleetLinkDeps) {
    this.config = resolveFleetConfig(config);
    this.topics = deviceTopics(this.config.fleet, this.config.device);
    this.#deps = deps;
    this.#now = deps.now ?? Date.now;
    this.#log = deps.log ?? (() => {});
    const deviceKey = deps.deviceKey ?? generateSigningKey().key;
    this.publicKey = deviceKey.publicKey;
    const { outbox, jobs } = deps.store;
    this.#presence = new DevicePresence({
      config: this.config,
      topics: this.topics,
      deviceKey,
      outbox,
      identity: deps.status,
      ...(deps.telemetry === undefined ? {} : { telemetry: deps.telemetry }),
      now: this.#now,
      log: this.#log,
    });
    this.#conn = (deps.connect ?? connectMqtt)({ ...this.config.connect, will: this.#presence.will() });
    this.#presence.attach(this.#conn);
    this.#publisher = createOutboxPublisher(this.#conn, outbox, {
      log: this.#log,
      sign: (topic, payload) => this.#presence.sign(topic, payload),
    });
    this.#gate = new CommandGate({
      operators: createKeyring(this.config.operatorKeys),
      ledger: createCommandLedger(deps.store.db, this.#now),
      jobs,
      now: this.#now,
    });
    this.#ownsEngine = deps.engine === undefined;
    this.#engine =
      deps.engine ??
      ownEngine(
        deps,
        jobReporter(this.config, (topic, body) => this.#publisher.enqueue(topic, body)),
        (job) => this.jobUpdated(job),
      );
    this.#listen();
    this.#startTimers();
    // Jobs a previous process left running go back to the queue and run again.
    if (this.#ownsEngine) this.#engine.start();
  }

  #listen(): void {
    const conn = this.#conn;
    conn.onMessage((msg) => {
      const t = parseTopic(msg.topic);
      if (t?.kind !== "cmd" || t.device !== this.config.device || t.fleet !== this.config.fleet) return;
      void this.#onCommand(t.name, msg);
    });
    conn.onConnect(() => {
      this.#connects++;
      void this.#presence.publishOnline();
      // On every CONNACK, session present or not: a broker restored from its
      // persistence file may hold the session without every subscription.
      conn.subscribe([this.topics.cmdFilter], { qos: 1 }).catch((err: unknown) => {
        this.#log(`fleet: cannot subscribe to commands: ${QuantdError.from(err).toLine()}`);
      });
    });
    conn.onError((err) => this.#log(`fleet: ${err.toLine()}`));
  }

  #startTimers(): void {
    // Others (the agent's engine, `quantd job --wait`) write to the outbox directly; pick their rows up.
    const drain = setInterval(() => this.#publisher.drain(), DRAIN_MS);
    const telemetry = setInterval(() => {
      if (!this.#stopped) this.#presence.tick();
    }, this.config.telemetryIntervalMs);
    for (const t of [drain, telemetry]) {
      t.unref?.();
      this.#timers.push(t);
    }
  }

  #publishJob(job: Job): void {
    this.#publisher.enqueue(this.topics.job(job.id), encodeJson(jobMessage(job, this.#now())));
  }

  #execute(cmd: FleetCommand, id: string): Promise<unknown> {
    const ctx: CommandContext = {
      id,
      jobs: this.#deps.store.jobs,
      engine: this.#engine,
      handler: this.#deps.handler,
      status: () => this.#presence.message(),
      publishJob: (job) => this.#publishJob(job),
    };
    return COMMAND_FAMILIES[cmd.name](cmd, ctx);
  }

  async #onCommand(name: string, msg: MqttMessage): Promise<void> {
    this.#commands++;
    const reply = await this.#gate.answer(name, msg, (cmd, id) => this.#execute(cmd, id));
    if (!reply.ok) this.#log(`fleet: command ${name} ${reply.id ?? "(no id)"} refused: ${reply.error.code}`);
    await this.#reply(name, msg, reply);
  }

  /** Sends a reply to the command's response topic, when it names one under the device's own reply/ level. */
  async #reply(name: string, msg: MqttMessage, reply: CommandReply): Promise<void> {
    if (msg.responseTopic === undefined) return;
    // A requester must not be able to make the device publish anywhere (its status, another device's
    // commands): replies go only under the device's own reply/ level, as createFleetRequester asks.
    const level = parseTopic(msg.responseTopic);
    if (level?.kind !== "reply" || level.fleet !== this.config.fleet || level.device !== this.config.device) {
      this.#log(
        `fleet: command ${name}: response topic ${msg.responseTopic} is outside ${this.topics.base}/reply/; not answered`,
      );
      return;
    }
    // Replies skip the outbox: the requester waits with a timeout and retries with the same id.
    const body = encodeJson(reply);
    const opts: Parameters<MqttConnection["publish"]>[2] = {
      qos: 1,
      userProperties: this.#presence.sign(msg.responseTopic, body),
    };
    if (msg.correlationData !== undefined) opts.correlationData = msg.correlationData;
    try {
      await this.#conn.publish(msg.responseTopic, body, opts);
    } catch (err) {
      this.#log(`fleet: reply to ${msg.responseTopic} not sent: ${QuantdError.from(err).toLine()}`);
    }
  }

  get connected(): boolean {
    return this.#conn.connected;
  }

  waitConnected(timeoutMs: number): Promise<boolean> {
    if (this.#conn.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        off();
        resolve(false);
      }, timeoutMs);
      const off = this.#conn.onConnect(() => {
        clearTimeout(timer);
        off();
        resolve(true);
      });
    });
  }

  report(report: Omit<ReportMessage, "device">): void {
    if (typeof report.id !== "string" || report.id === "") {
      throw new QuantdError("REQUEST_INVALID", "a report needs an id for subscribers to dedupe on");
    }
    this.#publisher.enqueue(this.topics.report, encodeReport({ ...report, device: this.config.device }));
  }

  jobUpdated(job: Job): void {
    if (this.#stopped) return;
    try {
      // No report here: the engine queued it before telling us, and this enqueue drains the outbox,
      // report included.
      this.#publishJob(job);
    } catch (err) {
      this.#log(`fleet: job ${job.id} update not queued: ${QuantdError.from(err).toLine()}`);
    }
  }

  refreshStatus(): Promise<void> {
    return this.#presence.publishOnline();
  }

  flushed(timeoutMs: number): Promise<boolean> {
    return this.#publisher.flushed(timeoutMs);
  }

  stats(): FleetLinkStats {
    return {
      connected: this.#conn.connected,
      connects: this.#connects,
      commands: this.#commands,
      unauthorized: this.#gate.unauthorized,
      outbox: this.#deps.store.outbox.stats(),
      publisher: this.#publisher.stats(),
      telemetrySent: this.#presence.telemetrySent,
    };
  }

  async stop(options: { flushMs?: number } = {}): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const t of this.#timers) clearInterval(t);
    if (this.#ownsEngine) await this.#engine.stop({ waitMs: 1000 });
    await this.#publisher.flushed(options.flushMs ?? 2000);
    this.#publisher.stop();
    await this.#presence.publishOffline();
    await this.#conn.close();
  }
}

/**
 * Starts the link and returns at once; it connects (and reconnects) in the
 * background, so an agent boots without a network.
 *
 * @throws CONFIG_INVALID on a bad broker URL, fleet or device name, or unreadable certificate file
 */
export function createFleetLink(config: FleetConfig, deps: FleetLinkDeps): FleetLink {
  return new DeviceLink(config, deps);
}
