/**
 * The stop signals a long-running command obeys: SIGTERM (systemd, a
 * supervisor) and SIGINT (Ctrl-C).
 */

/**
 * Listens for SIGTERM and SIGINT from now on and resolves with the first
 * one's name, then stops listening. Call it before the command says it is
 * ready: a signal that arrives while no handler is installed kills the process
 * (exit 143) before it closes what it opened, and a supervisor may send one as
 * soon as it reads the ready line.
 */
export function listenForStop(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      resolve(signal);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
}
