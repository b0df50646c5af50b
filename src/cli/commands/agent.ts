/**
 * `quantd agent`: runs the on-device agent (store, model registry, inference
 * server on a Unix socket) until SIGTERM or SIGINT; and `quantd agent models |
 * promote FILE | rollback`, which talk to a running agent over its socket.
 */
import { resolve } from "node:path";
import { startAgent } from "../../agent/agent.ts";
import { type ConfigFlags, loadAgentConfig } from "../../agent/config.ts";
import { notifyReady, notifyStopping, notifyWatchdog, watchdogIntervalMs } from "../../agent/sd-notify.ts";
import { detectDevice } from "../../device/detect.ts";
import { QuantdError, type QuantdErrorJSON } from "../../errors.ts";
import type { ModelVersionView, StartupRejection } from "../../server/types.ts";
import { STATE_DIR_DEFAULT } from "../agent-state.ts";
import type { Command, CommandContext } from "../command.ts";
import { LOG_FLAGS, loggerFromFlags } from "../log-flags.ts";
import { JSON_FLAG } from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagString, usageError } from "../parse.ts";
import { SHIPPED_MODEL } from "../paths.ts";
import { listenForStop } from "../stop-signal.ts";
import { describeModelVersion, describeModelVersions } from "../summaries.ts";

/** `GET /v1/models`. */
interface ModelsReply {
  active: number | null;
  versions: ModelVersionView[];
  rejectedAtStart?: StartupRejection;
}

/** The line saying the agent serves a stored version because the model it was started with did not load. */
function degradedLine(r: StartupRejection): string {
  return `degraded: started with ${r.path}, which did not load (${r.error.code}: ${r.error.message}); version ${r.servingVersion} serves instead`;
}

/** `POST /v1/models/promote|rollback`. */
interface VersionReply {
  version: ModelVersionView;
}

function configFlags(ctx: CommandContext): ConfigFlags {
  const flags: ConfigFlags = {};
  const pairs: [keyof ConfigFlags, string][] = [
    ["config", "config"],
    ["stateDir", "state-dir"],
    ["socket", "socket"],
    ["model", "model"],
    ["tcp", "tcp"],
    ["metricsListen", "metrics-listen"],
    ["broker", "broker"],
    ["device", "device"],
    ["fleet", "fleet"],
  ];
  for (const [key, flag] of pairs) {
    const v = flagString(ctx.flags, flag);
    if (v !== undefined) flags[key] = v;
  }
  return flags;
}

async function serve(ctx: CommandContext): Promise<number> {
  const logger = loggerFromFlags(ctx.flags, ctx.err);
  const { profile } = detectDevice();
  const config = loadAgentConfig({ profile, defaultModel: SHIPPED_MODEL, flags: configFlags(ctx) });
  const agent = await startAgent(config, { log: logger.line });
  const active = agent.registry.activeVersion();
  const rejected = agent.registry.startupRejection();
  // systemctl status shows this line: a board serving a stored version in place of its --model says so there.
  const status =
    `serving ${agent.config.modelName} version ${active?.id} (${active?.kind}) on ${config.socketPath}` +
    (rejected === undefined ? "" : `; degraded: ${rejected.path} did not load (${rejected.error.code})`);
  // Listening before the ready line: a stop sent as soon as it appears drains and closes the agent.
  const stopped = listenForStop();
  if (rejected === undefined) logger.info(`ready: ${status}, ${config.threads} threads`);
  else logger.warn(`ready: ${status}, ${config.threads} threads`);
  // systemd (Type=notify): ready only now that the model is loaded; the watchdog is petted from the
  // event loop, so a wedged loop stops the pings and systemd restarts the agent.
  notifyReady(status);
  const watchdogMs = watchdogIntervalMs();
  const watchdog = watchdogMs === undefined ? undefined : setInterval(() => notifyWatchdog(), watchdogMs);
  const signal = await stopped;
  notifyStopping();
  if (watchdog !== undefined) clearInterval(watchdog);
  logger.info(`${signal}: stopping (draining requests)`);
  await agent.stop();
  return 0;
}

/** Calls a running agent's admin route. @throws the agent's error code, or NOT_READY when nothing listens */
async function callAgent(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`http://localhost${path}`, {
      method,
      unix: socketPath,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
  } catch (err) {
    // ENOENT or ECONNREFUSED both mean the agent is not running there; Bun's own text for them
    // ("Was there a typo in the url or port?") would only mislead, so the cause stays in details.
    const errno = (err as { code?: unknown }).code;
    throw new QuantdError("NOT_READY", `no agent listens on ${socketPath}`, {
      details: { socket: socketPath, ...(typeof errno === "string" ? { errno } : {}) },
    });
  }
  const json = (await res.json().catch(() => ({}))) as { error?: QuantdErrorJSON };
  if (!res.ok) {
    // The agent's causes (onnxruntime's reason a model does not load) are what the user can act on.
    const e = json.error;
    throw QuantdError.fromJSON({
      details: {},
      ...e,
      code: e?.code ?? "INTERNAL",
      message: e?.message ?? `agent answered ${res.status}`,
    });
  }
  return json;
}

/** The `agent` command. */
export const agentCommand: Command = {
  name: "agent",
  summary: "run the on-device agent: inference over a Unix socket, model registry with hot swap",
  usage:
    "[--config FILE] [--state-dir DIR] [--socket PATH] [--model FILE] [--tcp HOST:PORT] | models | promote FILE|DIR | rollback",
  actions: ["models", "promote", "rollback"],
  description:
    "Without an action, runs the agent until SIGTERM/SIGINT: opens the store in the state directory, " +
    "registers and loads the model, and serves the Open Inference Protocol v2 (/v2/health/live, " +
    "/v2/health/ready, /v2/models/NAME, /v2/models/NAME/infer), the simple routes of the model's task " +
    "(POST /v1/classify {texts} or {pairs}, /v1/embed {texts}, /v1/tokens {texts}) and " +
    "Prometheus /metrics on the Unix socket (mode 0660), optionally also on a loopback TCP port.\n\n" +
    "Configuration: a JSON or TOML file (--config, or QUANTD_CONFIG), then QUANTD_* environment " +
    "variables (e.g. QUANTD_BATCHING_MAX_BATCH=8), then these flags.\n\n" +
    "Actions on a running agent (through its socket): `models` lists the registered versions, " +
    "`promote FILE|DIR` verifies a model (a model directory's model.onnx) with the serving version's " +
    "tokenizer and swaps it in, so a model whose directory holds another tokenizer.json is refused " +
    "(MODEL_INPUTS_MISMATCH; restart the agent with --model DIR to serve it); `rollback` serves the previous " +
    "version again; " +
    "each version serves with the tokenizer and config.json it was registered with, copied into the state " +
    "directory (tokenizers/), also after a restart without --model; " +
    "each prints a table (the serving version marked *), or with --json the agent's full answer.",
  flags: [
    { name: "config", type: "string", value: "FILE", description: "config file (.json or .toml)" },
    {
      name: "state-dir",
      type: "string",
      value: "DIR",
      description: "database and model versions",
      default: STATE_DIR_DEFAULT,
    },
    {
      name: "socket",
      type: "string",
      value: "PATH",
      description: "Unix socket",
      default: "$RUNTIME_DIRECTORY/quantd.sock, else <state-dir>/quantd.sock",
    },
    {
      name: "model",
      type: "string",
      value: "FILE|DIR",
      description:
        "initial model, or a model directory with model.onnx (served even when the store has another active version; " +
        "when it does not load, the store's active version serves instead, named by its own file in /v2/models/NAME, " +
        "and health, `agent models` and the fleet status say so)",
      default: "the store's active version (with its own tokenizer), else the shipped fp32 model",
    },
    {
      name: "tcp",
      type: "string",
      value: "HOST:PORT",
      description: "also listen on TCP (loopback hosts only)",
    },
    {
      name: "metrics-listen",
      type: "string",
      value: "HOST:PORT",
      description:
        "also serve GET /metrics (only that, read-only) on this address, any host, for a Prometheus scraper (config metrics.listen)",
    },
    {
      name: "broker",
      type: "string",
      value: "URL",
      description:
        "join a fleet: MQTT broker, mqtt://host:port or mqtts://host:port (more in the config's fleet section)",
    },
    {
      name: "device",
      type: "string",
      value: "ID",
      description: "fleet device id (MQTT client id)",
      default: "the host name",
    },
    {
      name: "fleet",
      type: "string",
      value: "NAME",
      description: "fleet name",
      default: "the config's fleet.fleet ($QUANTD_FLEET_FLEET), else default",
    },
    ...LOG_FLAGS,
    JSON_FLAG,
  ],
  async run(ctx) {
    const [action, ...rest] = ctx.positionals;
    if (action === undefined) return serve(ctx);
    const json = flagBool(ctx.flags, "json");
    const { profile } = detectDevice();
    const socketPath = loadAgentConfig({
      profile,
      defaultModel: SHIPPED_MODEL,
      flags: configFlags(ctx),
    }).socketPath;
    const print = (result: unknown, human: () => string[]): number => {
      if (json) ctx.out(JSON.stringify(result));
      else for (const line of human()) ctx.out(line);
      return 0;
    };
    switch (action) {
      case "models": {
        expectNoPositionals(rest);
        const r = (await callAgent(socketPath, "GET", "/v1/models")) as ModelsReply;
        return print(r, () => [
          ...describeModelVersions(r.versions, r.active),
          ...(r.rejectedAtStart === undefined ? [] : [degradedLine(r.rejectedAtStart)]),
        ]);
      }
      case "promote": {
        const [file, ...extra] = rest;
        if (file === undefined) throw usageError("promote needs the model FILE or DIR");
        expectNoPositionals(extra);
        const r = (await callAgent(socketPath, "POST", "/v1/models/promote", {
          path: resolve(file),
        })) as VersionReply;
        return print(r, () => describeModelVersion("promoted: now serving", r.version));
      }
      case "rollback": {
        expectNoPositionals(rest);
        const r = (await callAgent(socketPath, "POST", "/v1/models/rollback", {
          reason: "quantd agent rollback",
        })) as VersionReply;
        return print(r, () => describeModelVersion("rolled back: now serving", r.version));
      }
      default:
        throw usageError(`unknown action "${action}" (models, promote, rollback)`);
    }
  },
};
