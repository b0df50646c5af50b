import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Whether this process may mount a small tmpfs (root on Linux, mount allowed): the disk-full tests need it. */
export const canMountTmpfs: boolean = ((): boolean => {
  if (process.platform !== "linux" || process.getuid?.() !== 0) return false;
  const probe = join(tmpdir(), `quantd-mount-probe-${process.pid}`);
  mkdirSync(probe, { recursive: true });
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], { stdio: "ignore" });
    execFileSync("umount", [probe], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
