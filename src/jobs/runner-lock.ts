/**
 * The job engine's runner lock: one engine per state directory. The lock file
 * holds its taker's pid, start time and boot id; a lock whose process is gone
 * (a crash leaves it behind) or whose pid now names another process is taken
 * over. `quantd job … --wait` reads it to learn whether an agent will run its
 * job. Also here: removing the temporary files of atomic writes whose writer
 * died, which only the lock's holder may do safely.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { writeFailure } from "../core/files.ts";
import { QuantdError } from "../errors.ts";

/** The lock file's name inside the work root. */
export const RUNNER_LOCK_FILE = "runner.lock";

/** True when a process with this pid exists (EPERM: it exists but belongs to someone else). */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** What a runner lock file says about its holder. */
interface LockOwner {
  pid: number;
  /** The holder's start time in clock ticks after boot (`/proc/PID/stat` field 22); absent off Linux. */
  start?: number;
  /** The boot the holder ran in (`/proc/sys/kernel/random/boot_id`). */
  boot?: string;
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** A process's start time in clock ticks after boot, or `undefined` off Linux or when it is gone. */
function processStartTicks(pid: number): number | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const start = Number(fields[19]);
  return Number.isSafeInteger(start) ? start : undefined;
}

function bootId(): string | undefined {
  return readProc("/proc/sys/kernel/random/boot_id")?.trim();
}

/** The identity this process writes into a lock it takes. */
function selfLockOwner(): LockOwner {
  const owner: LockOwner = { pid: process.pid };
  const start = processStartTicks(process.pid);
  const boot = bootId();
  if (start !== undefined) owner.start = start;
  if (boot !== undefined) owner.boot = boot;
  return owner;
}

/** Parses a lock file: JSON `{pid, start, boot}`, or the bare pid earlier versions wrote. */
function parseLockOwner(text: string): LockOwner | undefined {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed) };
  try {
    const v: unknown = JSON.parse(trimmed);
    if (typeof v !== "object" || v === null) return undefined;
    const o = v as Record<string, unknown>;
    if (typeof o["pid"] !== "number") return undefined;
    const owner: LockOwner = { pid: o["pid"] };
    if (typeof o["start"] === "number") owner.start = o["start"];
    if (typeof o["boot"] === "string") owner.boot = o["boot"];
    return owner;
  } catch {
    return undefined;
  }
}

/**
 * Whether the process a lock names still holds it: alive, and the same
 * process — a pid is reused after a reboot or a wrap-around, so the holder's
 * boot and start time must match too. A bare-pid lock of an earlier version
 * counts only when its process runs quantd.
 */
function ownerHolds(owner: LockOwner): boolean {
  if (!processAlive(owner.pid)) return false;
  if (owner.start === undefined) {
    const cmdline = readProc(`/proc/${owner.pid}/cmdline`);
    return cmdline === undefined || cmdline.includes("quantd");
  }
  if (owner.boot !== undefined && bootId() !== undefined && owner.boot !== bootId()) return false;
  const start = processStartTicks(owner.pid);
  return start === undefined || start === owner.start;
}

/** The pid holding the runner lock of `workRoot`, when that process is alive and is the one that took it. */
export function runnerLockHolder(workRoot: string): number | undefined {
  const text = readProc(join(workRoot, RUNNER_LOCK_FILE));
  const owner = text === undefined ? undefined : parseLockOwner(text);
  return owner !== undefined && ownerHolds(owner) ? owner.pid : undefined;
}

/**
 * Takes the runner lock of `workRoot`; a lock left by a process that is gone
 * (or whose pid now names another process) is taken over. The lock is written
 * whole to a temporary file and linked into place, so a full disk never leaves
 * an empty lock behind. Returns the release function.
 *
 * @throws STATE_CONFLICT when a live process holds it
 * @throws FILE_WRITE_FAILED | DISK_FULL when the lock file cannot be written
 */
export function acquireRunnerLock(workRoot: string): () => void {
  const path = join(workRoot, RUNNER_LOCK_FILE);
  const tmp = join(workRoot, `.${RUNNER_LOCK_FILE}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  const writeFailed = (err: unknown): QuantdError =>
    writeFailure(err, `cannot write ${path}: ${(err as Error).message}`);

  const content = `${JSON.stringify(selfLockOwner())}\n`;
  try {
    mkdirSync(workRoot, { recursive: true, mode: 0o750 });
    const fd = openSync(tmp, "wx", 0o640);
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw writeFailed(err);
  }
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        linkSync(tmp, path);
        return () => {
          const owner = parseLockOwner(readProc(path) ?? "");
          if (owner?.pid === process.pid) rmSync(path, { force: true });
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw writeFailed(err);
        const holder = runnerLockHolder(workRoot);
        if (holder !== undefined) {
          throw new QuantdError("STATE_CONFLICT", `another job runner (pid ${holder}) uses ${workRoot}`, {
            details: { pid: holder },
          });
        }
        // Left by a process that died without releasing it, or naming a pid another process now has.
        rmSync(path, { force: true });
      }
    }
    throw new QuantdError("STATE_CONFLICT", `cannot take the job runner lock ${path}`);
  } finally {
    rmSync(tmp, { force: true });
  }
}

// The two temporary-file names our atomic writers use: core/files.ts's `.NAME.PID.HEX.tmp` and the registry's `.NAME.tmp-PID-HEX`.
const TEMP_NAMES = [/^\..+\.(\d+)\.[0-9a-f]+\.tmp$/, /^\..+\.tmp-(\d+)-[0-9a-f]+$/];

/**
 * Removes the temporary files of atomic writes whose writing process is gone
 * (a crash between create and rename leaves them). Returns the removed names.
 */
export function removeStaleTempFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    for (const re of TEMP_NAMES) {
      const m = re.exec(name);
      if (m === null) continue;
      if (!processAlive(Number(m[1]))) {
        rmSync(join(dir, name), { force: true });
        removed.push(name);
      }
      break;
    }
  }
  return removed;
}
