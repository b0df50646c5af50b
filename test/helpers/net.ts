/**
 * Loopback TCP helpers for tests that start real servers (mosquitto,
 * PostgreSQL): pick a free port, and probe whether something listens on it.
 */
import { createConnection, createServer } from "node:net";

/** A free loopback TCP port (bound then released). */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Whether a TCP connection to `127.0.0.1:port` succeeds now. */
export async function acceptsConnections(port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = createConnection({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}
