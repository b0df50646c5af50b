/**
 * Polling for tests that wait on another process or an event loop (a broker,
 * a job runner): resolves once `cond` holds, fails with a message naming what
 * was awaited when it does not hold in time.
 */

/** Resolves when `cond()` is true; throws `timed out waiting for <what>` after `ms`. */
export async function until(
  cond: () => boolean | Promise<boolean>,
  ms = 5000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (${ms} ms)`);
    await Bun.sleep(10);
  }
}
