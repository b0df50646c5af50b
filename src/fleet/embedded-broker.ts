/**
 * An MQTT 5 broker inside the process, for `quantd demo` and for trying the
 * fleet on one machine without installing mosquitto. The one file that
 * imports aedes.
 *
 * aedes 1.x speaks MQTT 3.1.1 only and refuses an MQTT 5 CONNECT; the 2.0
 * line (pinned, a beta at the time of writing) speaks MQTT 5 with what the
 * fleet link relies on: Response Topic and Correlation Data forwarded,
 * Message Expiry, Session Expiry and the Will Delay. It does not offer shared
 * subscriptions (its CONNACK says so; the controller then subscribes plainly).
 * It keeps everything in memory: a restart loses sessions and retained
 * messages, which is why a real deployment uses mosquitto or EMQX instead.
 */
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { Aedes } from "aedes";
import { QuantdError } from "../errors.ts";

/** A broker running in this process. */
export interface EmbeddedBroker {
  /** `mqtt://127.0.0.1:PORT`. */
  readonly url: string;
  readonly port: number;
  /** Clients connected now. */
  connectedClients(): number;
  /** Closes every connection and the listening socket. */
  close(): Promise<void>;
}

/** Options of {@link startEmbeddedBroker}. */
export interface EmbeddedBrokerOptions {
  /** Address to listen on; keep it loopback, the broker has no authentication. @defaultValue "127.0.0.1" */
  host?: string;
  /** TCP port; 0 picks a free one. @defaultValue 0 */
  port?: number;
}

/**
 * Starts an in-process MQTT 5 broker without authentication.
 *
 * @throws FLEET_UNAVAILABLE when it cannot listen (port taken, bad address)
 */
export async function startEmbeddedBroker(options: EmbeddedBrokerOptions = {}): Promise<EmbeddedBroker> {
  const host = options.host ?? "127.0.0.1";
  const broker = await Aedes.createBroker();
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    broker.handle(socket);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 0, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    broker.close();
    throw new QuantdError(
      "FLEET_UNAVAILABLE",
      `the embedded MQTT broker cannot listen on ${host}:${options.port ?? 0}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    url: `mqtt://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    connectedClients: () => broker.connectedClients,
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => broker.close(() => resolve()));
        // aedes closes its clients; a socket still half-open must not keep the server (and the process) alive.
        for (const s of sockets) s.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      })();
      return closing;
    },
  };
}
