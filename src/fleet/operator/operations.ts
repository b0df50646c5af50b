/**
 * Fleet operations over MQTT alone (no controller needed): list a fleet's
 * devices from their retained status messages, and send a job command to one
 * or many devices, optionally waiting for each job's report. The CLI's
 * `quantd fleet …` commands are thin wrappers over these.
 */
import { QuantdError } from "../../errors.ts";
import type { MqttConnection } from "../mqtt-client.ts";
import {
  type CommandName,
  checkName,
  decodeJson,
  parseTopic,
  type StatusMessage,
  TOPIC_ROOT,
} from "../protocol.ts";
import type { FleetRequester, FinishedJob } from "./requester.ts";

/**
 * The retained status of every device of `fleet`, by device name. Waits until
 * no retained message arrived for `quietMs` (or `maxWaitMs` in all).
 *
 * @throws FLEET_UNAVAILABLE when the subscription is refused
 */
export async function readFleetStatus(
  conn: MqttConnection,
  fleet: string,
  options: { quietMs?: number; maxWaitMs?: number } = {},
): Promise<StatusMessage[]> {
  checkName(fleet, "fleet");
  const filter = `${TOPIC_ROOT}/${fleet}/+/status`;
  const byDevice = new Map<string, StatusMessage>();
  let last = Date.now();
  const off = conn.onMessage((m) => {
    const t = parseTopic(m.topic);
    if (t?.kind !== "status" || t.fleet !== fleet) return;
    const body = decodeJson(m.payload);
    if (typeof body !== "object" || body === null) return;
    byDevice.set(t.device, { ...(body as StatusMessage), device: t.device, fleet });
    last = Date.now();
  });
  try {
    const start = Date.now();
    await conn.subscribe([filter], { qos: 1 });
    last = Date.now();
    const quiet = options.quietMs ?? 300;
    const max = options.maxWaitMs ?? 3000;
    while (Date.now() - last < quiet && Date.now() - start < max) await Bun.sleep(25);
  } finally {
    off();
    await conn.unsubscribe([filter]).catch(() => {});
  }
  return [...byDevice.values()].sort((a, b) => a.device.localeCompare(b.device));
}

/** The outcome of a job command on one device. */
export interface DeviceJobOutcome {
  device: string;
  id: string;
  /**
   * The job state: QUEUED/IN_PROGRESS when not waited for, a final state
   * otherwise; `REFUSED` when the device refused or did not answer, `UNKNOWN`
   * when it accepted but no report came within the wait.
   */
  state: string;
  /** The finished job's report, when waited for. */
  report?: FinishedJob["report"];
  /** Why the device refused the command or the wait failed. */
  error?: ReturnType<QuantdError["toJSON"]>;
}

/** Options of {@link runJobCommand}. */
export interface RunJobOptions {
  /** Wait for each job's report. @defaultValue false */
  wait?: boolean;
  /** Longest wait for a report. @defaultValue 30 min */
  waitTimeoutMs?: number;
  /** Reply timeout. @defaultValue 10 s */
  replyTimeoutMs?: number;
  /** Called on every progress message (for a progress line). */
  onProgress?: (device: string, state: string, stage: string | null) => void;
}

/**
 * Sends job command `name` to each device (in parallel) and collects the
 * outcomes in the devices' order. A device that refuses or does not answer
 * gets `state: "REFUSED"` with the error; the others are unaffected.
 */
export async function runJobCommand(
  requester: FleetRequester,
  devices: readonly string[],
  name: CommandName,
  params: Record<string, unknown>,
  options: RunJobOptions = {},
): Promise<DeviceJobOutcome[]> {
  const off =
    options.onProgress === undefined
      ? () => {}
      : requester.onJobProgress((device, msg) => options.onProgress?.(device, msg.state, msg.stage));
  try {
    return await Promise.all(
      devices.map(async (device): Promise<DeviceJobOutcome> => {
        const id = `${name}-${crypto.randomUUID()}`;
        const waiting =
          options.wait === true
            ? requester.waitForReport(device, id, options.waitTimeoutMs ?? 1_800_000)
            : undefined;
        // A rejected wait is handled below; never leave it unobserved meanwhile.
        waiting?.catch(() => {});
        try {
          const reply = await requester.request(device, name, params, {
            id,
            timeoutMs: options.replyTimeoutMs ?? 10_000,
          });
          if (!reply.ok) return { device, id, state: "REFUSED", error: reply.error };
          if (waiting === undefined) {
            const r = reply.result as { state?: string } | null;
            return { device, id, state: typeof r?.state === "string" ? r.state : "QUEUED" };
          }
          try {
            const done = await waiting;
            return { device, id, state: done.state, report: done.report };
          } catch (err) {
            // Accepted but no report in time: the job may still finish; say so rather than "refused".
            return { device, id, state: "UNKNOWN", error: QuantdError.from(err).toJSON() };
          }
        } catch (err) {
          return { device, id, state: "REFUSED", error: QuantdError.from(err, "FLEET_UNAVAILABLE").toJSON() };
        }
      }),
    );
  } finally {
    off();
  }
}
