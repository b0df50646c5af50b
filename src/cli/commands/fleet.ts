/**
 * `quantd fleet serve|devices|recalibrate|report|rollback`: the fleet
 * controller and the operator's commands. Everything goes over MQTT, so the
 * operator commands work with or without a running controller.
 */
import { readFileSync } from "node:fs";
import { QuantdError } from "../../errors.ts";
import { startController } from "../../fleet/controller/controller.ts";
import type { DashboardCredentials } from "../../fleet/controller/dashboard-auth.ts";
import { createDashboardCommands } from "../../fleet/controller/dashboard-commands.ts";
import { checkDashboardAddress, type DashboardOptions, startDashboard } from "../../fleet/controller/http.ts";
import { type RolloutEngine, startRolloutEngine } from "../../fleet/controller/rollout-engine.ts";
import { openSqliteFleetStore } from "../../fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../fleet/controller/store.ts";
import { connectMqttOnce, type MqttConnection, type MqttConnectOptions } from "../../fleet/mqtt-client.ts";
import { readFleetStatus, runJobCommand } from "../../fleet/operator/operations.ts";
import { createFleetRequester } from "../../fleet/operator/requester.ts";
import { checkName, parseCommand } from "../../fleet/protocol.ts";
import {
  keyId,
  parsePublicKey,
  readSigningKey,
  type SigningKey,
  writeNewSigningKey,
} from "../../fleet/signing.ts";
import { redactUrl } from "../../redact.ts";
import type { Command, CommandContext, FlagSpec } from "../command.ts";
import { LOG_FLAGS, loggerFromFlags } from "../log-flags.ts";
import { flagBool, flagInt, flagRequired, flagString, usageError } from "../parse.ts";
import { listenForStop } from "../stop-signal.ts";
import { describeDeviceStatus, describeFleetDevices, describeFleetOutcome } from "../summaries.ts";
import { keyPath, OPERATOR_KEY, requiredKey } from "./fleet-keys.ts";
import { DEFAULT_RELEASES_DIR, releaseCommand, rolloutCommand } from "./fleet-release.ts";

const SUBCOMMANDS = [
  "serve",
  "devices",
  "recalibrate",
  "report",
  "rollback",
  "keygen",
  "enroll",
  "release",
  "rollout",
] as const;
type Sub = (typeof SUBCOMMANDS)[number];

const CONNECTION_FLAGS: FlagSpec[] = [
  { name: "broker", type: "string", value: "URL", description: "mqtt://host:port or mqtts://host:port" },
  {
    name: "fleet",
    type: "string",
    value: "NAME",
    description: "fleet name (not for serve, which takes every fleet)",
    default: "$QUANTD_FLEET_FLEET, else default, as for quantd agent",
  },
  { name: "ca", type: "string", value: "FILE", description: "PEM CA certificate of the broker (mqtts)" },
  { name: "tls-cert", type: "string", value: "FILE", description: "PEM client certificate (mutual TLS)" },
  { name: "tls-key", type: "string", value: "FILE", description: "PEM client key (mutual TLS)" },
  {
    name: "key",
    type: "string",
    value: "FILE",
    description:
      "operator signing key (quantd fleet keygen) for recalibrate, rollback, report and serve's dashboard actions; keygen: where to write it",
    default: "$QUANTD_FLEET_KEY_FILE",
  },
  { name: "username", type: "string", value: "NAME", description: "broker username" },
  {
    name: "password-env",
    type: "string",
    value: "VAR",
    description: "environment variable holding the broker password (never on the command line)",
  },
  {
    name: "max-packet-bytes",
    type: "string",
    value: "N",
    description: "MQTT Maximum Packet Size: the broker drops larger messages to this client",
    default: "1048576 (serve: 262144)",
  },
  {
    name: "client-id",
    type: "string",
    value: "ID",
    description: "MQTT client id",
    default: "quantd-cli-<random> (serve: quantd-controller-<hostname>)",
  },
];

function readPem(ctx: CommandContext, flag: string): string | undefined {
  const path = flagString(ctx.flags, flag);
  if (path === undefined) return undefined;
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new QuantdError("FILE_NOT_FOUND", `--${flag}: cannot read ${path}`, { cause: err });
  }
}

function connectOptions(ctx: CommandContext, clientId: string): MqttConnectOptions {
  const o: MqttConnectOptions = { url: flagRequired(ctx.flags, "broker"), clientId };
  const ca = readPem(ctx, "ca");
  const cert = readPem(ctx, "tls-cert");
  const key = readPem(ctx, "tls-key");
  if (ca !== undefined) o.ca = ca;
  if (cert !== undefined) o.cert = cert;
  if (key !== undefined) o.key = key;
  const maxPacket = flagInt(ctx.flags, "max-packet-bytes", { min: 131_072, max: 268_435_455 });
  if (maxPacket !== undefined) o.maxPacketBytes = maxPacket;
  const username = flagString(ctx.flags, "username");
  if (username !== undefined) o.username = username;
  const pwVar = flagString(ctx.flags, "password-env");
  if (pwVar !== undefined) {
    const pw = process.env[pwVar];
    if (pw === undefined) throw usageError(`--password-env: $${pwVar} is not set`);
    o.password = pw;
  }
  return o;
}

/** `--fleet`, defaulting as the agent's fleet.fleet does (its environment variable, else `default`). */
function operatorFleet(ctx: CommandContext): string {
  const fromEnv = process.env["QUANTD_FLEET_FLEET"];
  return flagString(ctx.flags, "fleet") ?? (fromEnv === undefined || fromEnv === "" ? "default" : fromEnv);
}

async function withConnection<T>(
  ctx: CommandContext,
  fn: (conn: MqttConnection, fleet: string) => Promise<T>,
): Promise<T> {
  const fleet = checkName(operatorFleet(ctx), "fleet");
  const clientId = flagString(ctx.flags, "client-id") ?? `quantd-cli-${crypto.randomUUID().slice(0, 8)}`;
  const conn = await connectMqttOnce(connectOptions(ctx, clientId));
  try {
    return await fn(conn, fleet);
  } finally {
    await conn.close();
  }
}

/**
 * The operator key commands are signed with: `--key FILE`, else
 * `$QUANTD_FLEET_KEY_FILE`. Devices refuse unsigned commands, so it is required.
 *
 * @throws USAGE when neither is given; FILE_NOT_FOUND | CONFIG_INVALID from the file
 */
function operatorKey(ctx: CommandContext): SigningKey {
  return requiredKey(
    ctx,
    OPERATOR_KEY,
    "commands are signed: pass --key FILE (an operator key from quantd fleet keygen, trusted by the devices) or set QUANTD_FLEET_KEY_FILE",
  );
}

async function keygen(ctx: CommandContext): Promise<number> {
  const path = flagString(ctx.flags, "key") ?? ctx.positionals[1];
  if (path === undefined)
    throw usageError("quantd fleet keygen needs --key FILE (where to write the private key)");
  const key = writeNewSigningKey(path);
  if (flagBool(ctx.flags, "json")) {
    ctx.out(
      JSON.stringify({ key: path, publicKeyFile: `${path}.pub`, publicKey: key.publicKey, kid: key.kid }),
    );
  } else {
    ctx.err(`wrote ${path} (private, mode 0600) and ${path}.pub`);
    ctx.out(key.publicKey);
  }
  return 0;
}

async function openFleetStore(dbPath: string): Promise<FleetStore> {
  // A postgres:// URL is for several replicas sharing one state; a path is one controller's SQLite file.
  return /^postgres(ql)?:\/\//.test(dbPath)
    ? await (await import("../../fleet/controller/postgres-store.ts")).openPostgresFleetStore(dbPath)
    : await openSqliteFleetStore(dbPath);
}

async function enroll(ctx: CommandContext): Promise<number> {
  const device = oneDevice(ctx, "enroll");
  const fleet = checkName(operatorFleet(ctx), "fleet");
  const pubkey = flagRequired(ctx.flags, "pubkey");
  parsePublicKey(pubkey);
  const dbPath = flagString(ctx.flags, "db") ?? "quantd-fleet.db";
  const store = await openFleetStore(dbPath);
  try {
    await store.enroll(fleet, device, pubkey.trim(), Date.now());
  } finally {
    await store.close();
  }
  ctx.err(`enrolled ${fleet}/${device} (key ${keyId(pubkey.trim())}) in ${redactUrl(dbPath)}`);
  return 0;
}

/** A secret named by an `--…-env VAR` flag: never on the command line, where `ps` shows it. */
function secretFromEnv(ctx: CommandContext, flag: string): string | undefined {
  const name = flagString(ctx.flags, flag);
  if (name === undefined) return undefined;
  const value = process.env[name];
  if (value === undefined || value === "") throw usageError(`--${flag}: $${name} is not set`);
  return value;
}

/** The dashboard's credentials, TLS and actions from serve's flags. */
function dashboardOptions(
  ctx: CommandContext,
  conn: MqttConnectOptions,
  log: (line: string) => void,
): DashboardOptions {
  const credentials: DashboardCredentials = {};
  const token = secretFromEnv(ctx, "http-token-env");
  if (token !== undefined) credentials.token = token;
  const user = flagString(ctx.flags, "http-user");
  const password = secretFromEnv(ctx, "http-password-env");
  if ((user === undefined) !== (password === undefined)) {
    throw usageError("--http-user and --http-password-env go together");
  }
  if (user !== undefined && password !== undefined) credentials.user = { name: user, password };
  const cert = flagString(ctx.flags, "http-cert");
  const key = flagString(ctx.flags, "http-key");
  if ((cert === undefined) !== (key === undefined))
    throw usageError("--http-cert and --http-key go together");
  const options: DashboardOptions = {
    credentials,
    log,
    behindProxy: flagBool(ctx.flags, "http-behind-proxy"),
  };
  if (cert !== undefined && key !== undefined) options.tls = { certFile: cert, keyFile: key };
  // Dashboard actions are signed like `quantd fleet recalibrate`: with the operator key, when one is given.
  const operatorKeyPath = keyPath(ctx, OPERATOR_KEY);
  if (operatorKeyPath !== undefined) {
    const signer = readSigningKey(operatorKeyPath);
    const clientId = `${conn.clientId === "" ? "quantd-controller" : conn.clientId}-ops-${crypto.randomUUID().slice(0, 8)}`;
    options.commands = createDashboardCommands({
      connect: () => connectMqttOnce({ ...conn, clientId }),
      signer,
    });
  }
  return options;
}

async function serve(ctx: CommandContext): Promise<number> {
  const logger = loggerFromFlags(ctx.flags, ctx.err);
  const dbPath = flagString(ctx.flags, "db") ?? "quantd-fleet.db";
  const conn = connectOptions(ctx, flagString(ctx.flags, "client-id") ?? "");
  // The dashboard's address, credentials, TLS files and operator key are checked before anything starts.
  const http = flagString(ctx.flags, "http");
  const releasesDir = flagString(ctx.flags, "releases-dir") ?? DEFAULT_RELEASES_DIR;
  const options =
    http === undefined ? undefined : { ...dashboardOptions(ctx, conn, logger.line), releasesDir };
  if (http !== undefined && options !== undefined) checkDashboardAddress(http, options);
  const store = await openFleetStore(dbPath);
  // Logs name the database but never its password.
  const shownDb = redactUrl(dbPath);
  // connectOptions sets only the login, TLS and packet-size fields the controller takes by the same names.
  const { url: broker, clientId, ...login } = conn;
  const controller = startController({
    ...login,
    broker,
    store,
    ...(clientId === "" ? {} : { clientId }),
    log: logger.line,
  });
  const commands = options?.commands;
  const dashboard = http === undefined ? undefined : startDashboard(controller, http, options);
  // Listening before the ready line: a stop sent as soon as it appears closes the store and the broker link.
  const stopped = listenForStop();
  const ready = await controller.waitReady(10_000);
  logger.info(
    `${ready ? "subscribed" : "waiting for the broker"}: controller ${controller.clientId} on ${redactUrl(conn.url)}, db ${shownDb}` +
      (dashboard === undefined ? "" : `, dashboard ${dashboard.url}`),
  );
  // Rollouts are driven by every replica that can sign commands (the store arbitrates between them).
  const operatorKeyPath = keyPath(ctx, OPERATOR_KEY);
  const releaseUrl = flagString(ctx.flags, "release-url") ?? dashboard?.url;
  let rollouts: RolloutEngine | undefined;
  if (operatorKeyPath !== undefined && releaseUrl !== undefined) {
    rollouts = startRolloutEngine({
      store,
      connect: { ...conn, clientId: `${controller.clientId}-rollouts` },
      signer: readSigningKey(operatorKeyPath),
      releaseUrl,
      log: logger.line,
    });
    logger.info(`rollouts: driven by this controller; devices download releases from ${releaseUrl}`);
  } else {
    logger.info("rollouts: not driven here (needs --key to sign commands and --http or --release-url)");
  }
  logger.info(`${await stopped}: stopping`);
  await rollouts?.stop();
  dashboard?.stop();
  await commands?.close();
  await controller.stop();
  await store.close();
  return 0;
}

async function devices(ctx: CommandContext): Promise<number> {
  return await withConnection(ctx, async (conn, fleet) => {
    const statuses = await readFleetStatus(conn, fleet);
    if (flagBool(ctx.flags, "json")) {
      ctx.out(JSON.stringify(statuses));
      return 0;
    }
    if (statuses.length === 0) {
      ctx.err(`no device of fleet ${fleet} has published a status`);
      return 0;
    }
    for (const line of describeFleetDevices(statuses, Date.now())) ctx.out(line);
    return 0;
  });
}

function oneDevice(ctx: CommandContext, sub: string): string {
  const rest = ctx.positionals.slice(1);
  if (rest.length !== 1) throw usageError(`quantd fleet ${sub} takes one device name`);
  return checkName(rest[0]!, "device");
}

async function jobCommand(ctx: CommandContext, sub: "recalibrate" | "rollback"): Promise<number> {
  const all = flagBool(ctx.flags, "all");
  const named = ctx.positionals.slice(1);
  if (all === named.length > 0) throw usageError(`quantd fleet ${sub} takes one device name or --all`);
  if (named.length > 1) throw usageError(`quantd fleet ${sub} takes one device name (or --all)`);
  const params: Record<string, unknown> = {};
  if (sub === "recalibrate") {
    const samples = flagInt(ctx.flags, "samples", { min: 1 });
    if (samples !== undefined) params.samples = samples;
    const method = flagString(ctx.flags, "method");
    if (method !== undefined) params.method = method;
    const mode = flagString(ctx.flags, "mode");
    if (mode !== undefined) params.mode = mode;
    const prefer = flagString(ctx.flags, "prefer");
    if (prefer !== undefined) params.prefer = prefer;
    // Checked here as every device will check it: a typo is a usage error now, not a refusal from each device.
    try {
      parseCommand("recalibrate", params);
    } catch (err) {
      const e = QuantdError.from(err);
      throw usageError(e.message, e.details);
    }
  } else {
    const version = flagString(ctx.flags, "version");
    if (version !== undefined) params.version = version;
  }
  const signer = operatorKey(ctx);
  const json = flagBool(ctx.flags, "json");
  const wait = flagBool(ctx.flags, "wait");
  const timeoutSec = flagInt(ctx.flags, "timeout", { min: 1 }, 1800);
  return await withConnection(ctx, async (conn, fleet) => {
    const targets = all
      ? (await readFleetStatus(conn, fleet)).filter((s) => s.state === "online").map((s) => s.device)
      : [checkName(named[0]!, "device")];
    if (targets.length === 0)
      throw new QuantdError("FLEET_UNAVAILABLE", `no device of fleet ${fleet} is online`);
    const requester = await createFleetRequester(conn, fleet, { signer });
    try {
      const outcomes = await runJobCommand(requester, targets, sub, params, {
        wait,
        waitTimeoutMs: timeoutSec * 1000,
        replyTimeoutMs: flagInt(ctx.flags, "reply-timeout", { min: 1 }, 10) * 1000,
        onProgress: json
          ? undefined
          : (device, state, stage) => ctx.err(`${device}: ${state}${stage === null ? "" : ` (${stage})`}`),
      });
      if (json) {
        ctx.out(JSON.stringify(all ? outcomes : outcomes[0]));
      } else {
        for (const o of outcomes) for (const l of describeFleetOutcome(o)) ctx.out(l);
      }
      const failed = outcomes.filter((o) => o.state !== "SUCCEEDED" && (wait || o.state === "REFUSED"));
      return failed.length === 0 ? 0 : 1;
    } finally {
      await requester.close();
    }
  });
}

async function report(ctx: CommandContext): Promise<number> {
  const device = oneDevice(ctx, "report");
  const signer = operatorKey(ctx);
  return await withConnection(ctx, async (conn, fleet) => {
    const requester = await createFleetRequester(conn, fleet, { signer });
    try {
      const timeoutMs = flagInt(ctx.flags, "reply-timeout", { min: 1 }, 10) * 1000;
      const reply = await requester.request(device, "status", {}, { timeoutMs });
      if (!reply.ok)
        throw new QuantdError(reply.error.code, reply.error.message, { details: reply.error.details ?? {} });
      const status = reply.result as Record<string, unknown>;
      if (flagBool(ctx.flags, "json")) {
        ctx.out(JSON.stringify(status));
        return 0;
      }
      for (const line of describeDeviceStatus(device, status)) ctx.out(line);
      return 0;
    } finally {
      await requester.close();
    }
  });
}

/** The `fleet` command. */
export const fleetCommand: Command = {
  name: "fleet",
  summary:
    "fleet controller and signed remote commands over MQTT (serve, devices, recalibrate, report, rollback, keygen, enroll, release, rollout)",
  actions: SUBCOMMANDS,
  usage:
    "serve --broker URL [--db FILE|postgres://…] [--http HOST:PORT [--key FILE] [--http-token-env VAR] [--http-user NAME --http-password-env VAR] [--http-cert FILE --http-key FILE|--http-behind-proxy]] | devices|report DEVICE|recalibrate DEVICE|--all [--mode M] [--prefer P] [--wait]|rollback DEVICE --broker URL [--fleet NAME] --key FILE [--json] | keygen --key FILE | enroll DEVICE [--fleet NAME] --pubkey KEY [--db FILE] | release create DIR --release-key FILE --version NAME [--notes TEXT] | release list | rollout start RELEASE --fleet NAME [--waves 1,10,50,100%] [--gate agreement=99.5,latencyRatio=1.1,errorRate=0.01] [--soak 10m] | rollout status|pause|resume|abort ID",
  description:
    "serve: runs the fleet controller: a persistent shared subscription ($share/quantd-controllers/quantd/v1/+/+/#, " +
    "so replicas split the fleet) storing devices, status history, telemetry, jobs and reports in a SQLite file " +
    "(only messages signed by an enrolled device key; the rest are refused and counted in /api/stats) " +
    "(--db; a postgres:// URL for several replicas sharing one state), with a live dashboard on --http: fleet aggregates, " +
    "alerts, device history and charts, and actions (recalibrate, quantize-dynamic, rollback, bench) signed with the operator key " +
    "(--key; without it the buttons say why they are disabled). On loopback it needs no login; on any other address it needs " +
    "credentials (--http-token-env, or --http-user with --http-password-env) and TLS (--http-cert/--http-key, or " +
    "--http-behind-proxy behind a reverse proxy, see docs/fleet.md). Stops on SIGTERM/SIGINT.\n\n" +
    "devices: lists the fleet's devices from their retained status messages; a device serving a stored version " +
    "because the model it was started with did not load is marked degraded, with the file and the error.\n\n" +
    "recalibrate DEVICE|--all: sends a recalibrate command (idempotent id, 60 s expiry) and prints the job id; " +
    "with --wait, waits for the report and prints a summary per device (decision, agreement, latency, size, stages); " +
    "with --json, prints one JSON object (--all: an array) with `state` and the full report. " +
    "Exit 1 when a device refused or (with --wait) the job did not succeed.\n\n" +
    "report DEVICE: asks the device for its status and last job's report (a degraded row when it serves a " +
    "stored version because the model it was started with did not load).\n\n" +
    "rollback DEVICE|--all: returns the device to its previous model version (or --version).\n\n" +
    "recalibrate, report and rollback sign each command with the operator key (--key FILE or $QUANTD_FLEET_KEY_FILE); " +
    "devices run only commands signed by a key in their fleet.operatorKeys and refuse the rest with COMMAND_UNAUTHORIZED.\n\n" +
    "keygen --key FILE: writes a new Ed25519 operator key (FILE, mode 0600, and FILE.pub) and prints the public key " +
    "to put in the devices' fleet.operatorKeys.\n\n" +
    "enroll DEVICE --fleet NAME --pubkey KEY: records the device's public key (logged by the agent at start) in the " +
    "controller's database (--db), so the controller stores what the device signs.\n\n" +
    "release create DIR --release-key FILE --version NAME [--notes TEXT] [--task NAME]: packs an fp32 model directory " +
    "(model.onnx, tokenizer and config files, an optional labelled validation.tsv) into a content-addressed release " +
    "(id: SHA-256 of its manifest, which lists each file's SHA-256 and size) signed by the release key; the files go " +
    "to --releases-dir, the manifest to --db, and serve's --http serves them to devices (GET /releases/ID, with range " +
    "requests on /releases/ID/files/NAME). release list: the releases in --db.\n\n" +
    "rollout start RELEASE --fleet NAME: puts a release (id, id prefix or version) on the fleet's devices in waves " +
    "(--waves, cumulative percentages, the first is the canary) with --db's controller: each device downloads, " +
    "quantizes and checks it; a wave passes when every device that took it succeeded within --gate (agreement " +
    "with the new fp32 in percent, latency ratio of the benchmark and of post-swap telemetry, post-swap error rate) " +
    "and --soak passed; a breach halts the rollout and rolls that wave back. Devices offline in their wave get it on " +
    "return until --pending-expiry. rollout status [ID] | pause ID | resume ID | abort ID. The controller (serve) " +
    "drives rollouts when it has --key (the operator key the devices trust) and --http or --release-url.",
  flags: [
    ...CONNECTION_FLAGS,
    {
      name: "db",
      type: "string",
      value: "FILE",
      description: "serve: SQLite file, or postgres://user@host/db shared by several replicas",
      default: "quantd-fleet.db",
    },
    {
      name: "http",
      type: "string",
      value: "HOST:PORT",
      description: "serve: dashboard address, e.g. 127.0.0.1:8080 (non-loopback: needs credentials and TLS)",
    },
    {
      name: "http-token-env",
      type: "string",
      value: "VAR",
      description:
        "serve: environment variable holding the dashboard token (login page, or Authorization: Bearer)",
    },
    { name: "http-user", type: "string", value: "NAME", description: "serve: dashboard username" },
    {
      name: "http-password-env",
      type: "string",
      value: "VAR",
      description: "serve: environment variable holding the dashboard password of --http-user",
    },
    {
      name: "http-cert",
      type: "string",
      value: "FILE",
      description: "serve: PEM certificate: serve the dashboard over HTTPS",
    },
    { name: "http-key", type: "string", value: "FILE", description: "serve: PEM private key of --http-cert" },
    {
      name: "http-behind-proxy",
      type: "boolean",
      description:
        "serve: a reverse proxy terminates TLS in front of the dashboard (allows a non-loopback --http without --http-cert)",
    },
    { name: "all", type: "boolean", description: "recalibrate/rollback: every online device of the fleet" },
    { name: "wait", type: "boolean", description: "recalibrate/rollback: wait for the job's report" },
    {
      name: "timeout",
      type: "string",
      value: "SEC",
      description: "longest wait for a report",
      default: "1800",
    },
    {
      name: "reply-timeout",
      type: "string",
      value: "SEC",
      description: "longest wait for a device's reply to a command",
      default: "10",
    },
    {
      name: "samples",
      type: "string",
      value: "N",
      description: "recalibrate, rollout start: calibration samples (each device's)",
    },
    { name: "method", type: "string", value: "NAME", description: "recalibrate: calibration method" },
    {
      name: "mode",
      type: "string",
      value: "MODE",
      description:
        "recalibrate: static, dynamic or auto (every int8 form fast on the board, timed there) (default: static)",
    },
    {
      name: "prefer",
      type: "string",
      value: "WHAT",
      description:
        "recalibrate: latency (an int8 slower than fp32 is rejected, fp32 keeps serving) or size (the smaller int8 serves) (default: the device's quantize.prefer)",
    },
    {
      name: "version",
      type: "string",
      value: "ID",
      description: "rollback: model version to return to; release create: the release's version name",
    },
    { name: "notes", type: "string", value: "TEXT", description: "release create: release notes" },
    {
      name: "task",
      type: "string",
      value: "NAME",
      description: "release create: the model's task",
      default: "text-classification",
    },
    {
      name: "release-key",
      type: "string",
      value: "FILE",
      description: "release create: the release signing key (quantd fleet keygen)",
      default: "$QUANTD_RELEASE_KEY_FILE",
    },
    {
      name: "waves",
      type: "string",
      value: "LIST",
      description: "rollout start: wave sizes",
      default: "1,10,50,100%",
    },
    {
      name: "gate",
      type: "string",
      value: "LIST",
      description: "rollout start: agreement=PERCENT,latencyRatio=RATIO,errorRate=FRACTION",
    },
    {
      name: "soak",
      type: "string",
      value: "DURATION",
      description: "rollout start: soak per wave",
      default: "10m",
    },
    {
      name: "pending-expiry",
      type: "string",
      value: "DURATION",
      description: "rollout start: how long an offline device may still get the release",
      default: "24h",
    },
    {
      name: "release-url",
      type: "string",
      value: "URL",
      description: "serve: the address devices download releases from",
      default: "the --http address",
    },
    {
      name: "releases-dir",
      type: "string",
      value: "DIR",
      description: "serve, release create: where release files are kept",
      default: DEFAULT_RELEASES_DIR,
    },
    { name: "json", type: "boolean", description: "print JSON" },
    ...LOG_FLAGS.map((f) => ({ ...f, description: `serve: ${f.description}` })),
    {
      name: "pubkey",
      type: "string",
      value: "KEY",
      description: "enroll: the device's public key (the agent logs it at start; base64url, 43 characters)",
    },
  ],
  async run(ctx) {
    const sub = ctx.positionals[0];
    if (sub === undefined || !(SUBCOMMANDS as readonly string[]).includes(sub)) {
      throw usageError(
        sub === undefined
          ? `quantd fleet needs a subcommand: ${SUBCOMMANDS.join(", ")}`
          : `unknown fleet subcommand ${JSON.stringify(sub)} (known: ${SUBCOMMANDS.join(", ")})`,
      );
    }
    const s = sub as Sub;
    switch (s) {
      case "serve":
        if (ctx.positionals.length > 1) throw usageError("quantd fleet serve takes no positional arguments");
        return await serve(ctx);
      case "devices":
        if (ctx.positionals.length > 1)
          throw usageError("quantd fleet devices takes no positional arguments");
        return await devices(ctx);
      case "recalibrate":
      case "rollback":
        return await jobCommand(ctx, s);
      case "report":
        return await report(ctx);
      case "keygen":
        return await keygen(ctx);
      case "enroll":
        return await enroll(ctx);
      case "release":
        return await releaseCommand(ctx, openFleetStore);
      case "rollout":
        return await rolloutCommand(ctx, checkName(operatorFleet(ctx), "fleet"), openFleetStore);
    }
  },
};
