/**
 * What every command passes before anything runs: a size cap, an operator's
 * signature over topic and body (the topic binds it to this fleet, device
 * and command name), a well-formed envelope, an expiry not yet due and not
 * too far ahead, and an id never run before. A retry of a command (same id)
 * gets the first answer again and never runs twice: from memory, from the
 * job table (a job command's id is its job's), or refused as a replay by the
 * durable ledger after a restart.
 */
import { QuantdError } from "../../errors.ts";
import type { JobStore } from "../../store/jobs.ts";
import type { MqttMessage } from "../mqtt-client.ts";
import {
  type CommandEnvelope,
  type CommandReply,
  type FleetCommand,
  MAX_COMMAND_BYTES,
  MAX_COMMAND_TTL_MS,
  parseCommand,
  parseEnvelope,
} from "../protocol.ts";
import type { Keyring, SignatureProblem } from "../signing.ts";
import type { CommandLedger } from "./command-ledger.ts";

/** Replies kept in memory for repeated command ids (job commands are also deduplicated by the job table). */
const REPLY_CACHE_SIZE = 1024;

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
      {
        details: { id: env.id, expiresAt: env.expiresAt },
      },
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

/** Runs a command that passed the gate; resolves with its reply's result. */
export type CommandExecutor = (cmd: FleetCommand, id: string) => Promise<unknown>;

/** Options of {@link CommandGate}. */
export interface CommandGateOptions {
  operators: Keyring;
  ledger: CommandLedger;
  jobs: JobStore;
  now: () => number;
}

/** Checks commands and answers each id once. */
export class CommandGate {
  readonly #o: CommandGateOptions;
  readonly #replies = new Map<string, CommandReply>();
  readonly #pending = new Map<string, Promise<CommandReply>>();
  /** Commands refused before anything ran: unsigned, unknown key, bad signature, replayed or expired. */
  unauthorized = 0;

  constructor(options: CommandGateOptions) {
    this.#o = options;
  }

  /** The envelope of a signed command within the size cap. @throws REQUEST_TOO_LARGE | COMMAND_UNAUTHORIZED | COMMAND_INVALID */
  #envelope(msg: MqttMessage): CommandEnvelope {
    if (msg.payload.byteLength > MAX_COMMAND_BYTES) {
      throw new QuantdError(
        "REQUEST_TOO_LARGE",
        `command body of ${msg.payload.byteLength} bytes exceeds ${MAX_COMMAND_BYTES}`,
        { details: { bytes: msg.payload.byteLength, max: MAX_COMMAND_BYTES } },
      );
    }
    // Nothing is parsed, looked up or run before the signature holds.
    const { operators } = this.#o;
    const problem = operators.check(msg.topic, msg.payload, msg.userProperties);
    if (problem !== undefined) throw unauthorizedCommand(problem, operators.size);
    return parseEnvelope(msg.payload);
  }

  /**
   * The answer already given (or being given) to this id, if any. Synchronous
   * on purpose: a retry that arrives while the first is still being checked
   * must find it pending, not race it to the replay ledger.
   */
  #earlier(name: string, id: string): CommandReply | Promise<CommandReply> | undefined {
    const cached = this.#replies.get(id) ?? this.#pending.get(id);
    if (cached !== undefined) return cached;
    // An already-known job id answers from the table even when the cache was lost (restart).
    const known = this.#o.jobs.get(id);
    if (known !== undefined)
      return { id, command: name, ok: true, result: { jobId: known.id, state: known.state } };
    return undefined;
  }

  /** Runs a new command once and remembers its reply. */
  async #run(name: string, env: CommandEnvelope, execute: CommandExecutor): Promise<CommandReply> {
    checkExpiry(env, this.#o.now());
    if (!this.#o.ledger.claim(env.id, env.expiresAt as number)) {
      throw new QuantdError(
        "COMMAND_UNAUTHORIZED",
        `command ${env.id} was already run; ids are never reused`,
        {
          details: { id: env.id, reason: "replayed" },
        },
      );
    }
    const cmd = parseCommand(name, env.params);
    const id = env.id;
    const work = execute(cmd, id).then(
      (result): CommandReply => ({ id, command: name, ok: true, result }),
      (err: unknown): CommandReply => ({
        id,
        command: name,
        ok: false,
        error: QuantdError.from(err).toJSON(),
      }),
    );
    this.#pending.set(id, work);
    const reply = await work;
    this.#pending.delete(id);
    this.#replies.set(id, reply);
    if (this.#replies.size > REPLY_CACHE_SIZE) {
      const oldest = this.#replies.keys().next().value;
      if (oldest !== undefined) this.#replies.delete(oldest);
    }
    return reply;
  }

  /** The reply to command `name` in `msg`, running it through `execute` when it is new and allowed. */
  async answer(name: string, msg: MqttMessage, execute: CommandExecutor): Promise<CommandReply> {
    let id: string | null = null;
    try {
      const env = this.#envelope(msg);
      id = env.id;
      // No await before #run has registered the command as pending (see #earlier).
      return await (this.#earlier(name, env.id) ?? this.#run(name, env, execute));
    } catch (err) {
      const e = QuantdError.from(err, "COMMAND_INVALID");
      if (e.code === "COMMAND_UNAUTHORIZED" || e.code === "COMMAND_EXPIRED") this.unauthorized++;
      return { id, command: name, ok: false, error: e.toJSON() };
    }
  }
}
