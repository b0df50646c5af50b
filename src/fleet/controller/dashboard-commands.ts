/**
 * The dashboard's way to act: job commands signed with the operator key,
 * sent over an MQTT connection of its own (as `quantd fleet recalibrate`
 * does), so a device checks a dashboard command exactly as one from the
 * CLI. Without an operator key the dashboard cannot act, and says why.
 */
import { QuantdError } from "../../errors.ts";
import type { MqttConnection } from "../mqtt-client.ts";
import { type DeviceJobOutcome, runJobCommand } from "../operator/operations.ts";
import { createFleetRequester, type FleetRequester } from "../operator/requester.ts";
import { type CommandName, checkName } from "../protocol.ts";
import type { SigningKey } from "../signing.ts";

/**
 * The job commands the dashboard offers on devices. A release needs a release
 * to name: it is started from the rollout view, not from these buttons.
 */
export const DASHBOARD_COMMANDS: readonly CommandName[] = [
  "recalibrate",
  "quantize-dynamic",
  "rollback",
  "bench",
];

/** Most devices one dashboard action may address. */
export const MAX_ACTION_TARGETS = 1000;

/** One device an action addresses. */
export interface ActionTarget {
  fleet: string;
  device: string;
}

/** The outcome of an action on one device. */
export interface ActionOutcome extends DeviceJobOutcome {
  fleet: string;
}

/** Sends the dashboard's commands. */
export interface DashboardCommands {
  /** Id of the operator key commands are signed with. */
  readonly kid: string;
  /**
   * Sends job command `name` to every target (grouped by fleet, in parallel)
   * and returns each device's outcome (job id and state, or why it refused).
   *
   * @throws REQUEST_INVALID on an unknown command or bad target; FLEET_UNAVAILABLE when the broker cannot be reached
   */
  send(
    name: string,
    targets: readonly ActionTarget[],
    params: Record<string, unknown>,
  ): Promise<ActionOutcome[]>;
  close(): Promise<void>;
}

/** Options of {@link createDashboardCommands}. */
export interface DashboardCommandsOptions {
  /** Opens the operator's MQTT connection (called on first use, and again after a failure). */
  connect: () => Promise<MqttConnection>;
  signer: SigningKey;
  /** How long a device has to accept a command. @defaultValue 10000 */
  replyTimeoutMs?: number;
}

function checkAction(name: string, targets: readonly ActionTarget[]): CommandName {
  if (!(DASHBOARD_COMMANDS as readonly string[]).includes(name)) {
    throw new QuantdError(
      "REQUEST_INVALID",
      `unknown action ${JSON.stringify(name)} (known: ${DASHBOARD_COMMANDS.join(", ")})`,
    );
  }
  if (targets.length === 0) throw new QuantdError("REQUEST_INVALID", "select at least one device");
  if (targets.length > MAX_ACTION_TARGETS) {
    throw new QuantdError("REQUEST_INVALID", `at most ${MAX_ACTION_TARGETS} devices per action`);
  }
  for (const t of targets) {
    checkName(t.fleet, "fleet");
    checkName(t.device, "device");
  }
  return name as CommandName;
}

/** Commands signed with `options.signer`, over a connection opened on first use. */
export function createDashboardCommands(options: DashboardCommandsOptions): DashboardCommands {
  let conn: Promise<MqttConnection> | undefined;
  const requesters = new Map<string, Promise<FleetRequester>>();
  const connection = (): Promise<MqttConnection> => {
    conn ??= options.connect().catch((err: unknown) => {
      conn = undefined;
      throw QuantdError.from(err, "FLEET_UNAVAILABLE");
    });
    return conn;
  };
  const requester = (fleet: string): Promise<FleetRequester> => {
    let r = requesters.get(fleet);
    if (r === undefined) {
      r = connection().then((c) => createFleetRequester(c, fleet, { signer: options.signer }));
      r.catch(() => requesters.delete(fleet));
      requesters.set(fleet, r);
    }
    return r;
  };
  return {
    kid: options.signer.kid,
    async send(name, targets, params) {
      const command = checkAction(name, targets);
      const byFleet = new Map<string, string[]>();
      for (const t of targets) byFleet.set(t.fleet, [...(byFleet.get(t.fleet) ?? []), t.device]);
      const groups = await Promise.all(
        [...byFleet].map(async ([fleet, devices]) => {
          const outcomes = await runJobCommand(await requester(fleet), devices, command, params, {
            replyTimeoutMs: options.replyTimeoutMs ?? 10_000,
          });
          return outcomes.map((o) => ({ ...o, fleet }));
        }),
      );
      return groups.flat();
    },
    async close() {
      for (const r of requesters.values()) await (await r.catch(() => undefined))?.close();
      requesters.clear();
      const c = await conn?.catch(() => undefined);
      conn = undefined;
      await c?.close();
    },
  };
}
