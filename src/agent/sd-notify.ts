/**
 * systemd's readiness and watchdog protocol (`Type=notify`, `WatchdogSec=`):
 * one datagram such as `READY=1` sent to the Unix socket named by
 * `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`).
 *
 * Bun and Node have no Unix datagram sockets, so the datagram goes out through
 * libc's `socket`/`sendto` via `bun:ffi`; when libc cannot be bound, libsystemd's
 * own `sd_notify` is tried. When neither works, or when `NOTIFY_SOCKET` is unset
 * (run by hand, under Docker, in tests), every function is a no-op that returns
 * false: notification must never take the agent down.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";

/** Environment a notification reads; the process environment unless given. */
export type NotifyEnv = Record<string, string | undefined>;

// Linux ABI constants (identical on x86-64 and arm64).
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
/** `sizeof(struct sockaddr_un)`: a 2-byte family and 108 bytes of path. */
const SOCKADDR_UN_SIZE = 110;
const SUN_PATH_MAX = 108;

interface Sender {
  send(socketName: string, state: string): boolean;
}

function openLibc(): Sender {
  const lib = dlopen("libc.so.6", {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sendto: {
      args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32],
      returns: FFIType.i64,
    },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  });
  return {
    send(socketName, state) {
      const name = Buffer.from(socketName.startsWith("@") ? `\0${socketName.slice(1)}` : socketName, "utf8");
      // A path needs room for its terminating NUL; an abstract name does not.
      if (name.length === 0 || name.length >= SUN_PATH_MAX) return false;
      const addr = new Uint8Array(SOCKADDR_UN_SIZE);
      new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
      addr.set(name, 2);
      const addrLen = socketName.startsWith("@") ? 2 + name.length : 2 + name.length + 1;
      const payload = Buffer.from(state, "utf8");
      const fd = lib.symbols.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return false;
      try {
        const sent = lib.symbols.sendto(fd, ptr(payload), payload.length, MSG_NOSIGNAL, ptr(addr), addrLen);
        return Number(sent) === payload.length;
      } finally {
        lib.symbols.close(fd);
      }
    },
  };
}

function openLibsystemd(): Sender {
  const lib = dlopen("libsystemd.so.0", {
    sd_notify: { args: [FFIType.i32, FFIType.cstring], returns: FFIType.i32 },
  });
  return {
    // libsystemd reads NOTIFY_SOCKET from the real environment itself.
    send(_socketName, state) {
      return lib.symbols.sd_notify(0, ptr(Buffer.from(`${state}\0`, "utf8"))) > 0;
    },
  };
}

let sender: Sender | null | undefined;

function getSender(): Sender | null {
  if (sender !== undefined) return sender;
  for (const open of [openLibc, openLibsystemd]) {
    try {
      sender = open();
      return sender;
    } catch {
      // Not glibc, or bun:ffi unavailable (Node): try the next way, then give up quietly.
    }
  }
  sender = null;
  return sender;
}

/**
 * Sends one notification (newline-separated `KEY=VALUE` assignments) to the
 * service manager.
 *
 * @param state - e.g. `READY=1` or `STATUS=calibrating`
 * @param env - where `NOTIFY_SOCKET` is read. @defaultValue process.env
 * @returns true when the datagram was sent; false when there is no service
 * manager to tell or it could not be reached (never throws)
 */
export function sdNotify(state: string, env: NotifyEnv = process.env): boolean {
  const socketName = env["NOTIFY_SOCKET"];
  if (socketName === undefined || socketName === "") return false;
  const s = getSender();
  if (s === null) return false;
  try {
    return s.send(socketName, state);
  } catch {
    return false;
  }
}

/**
 * Tells systemd the service is ready (the socket listens, the model is loaded).
 * Sends `READY=1`, `MAINPID` and, when given, `STATUS`.
 *
 * @param status - optional human status shown by `systemctl status`
 * @param env - where `NOTIFY_SOCKET` is read. @defaultValue process.env
 * @returns whether the notification was sent
 */
export function notifyReady(status?: string, env: NotifyEnv = process.env): boolean {
  const lines = [`READY=1`, `MAINPID=${process.pid}`];
  if (status !== undefined) lines.push(`STATUS=${oneLine(status)}`);
  return sdNotify(lines.join("\n"), env);
}

/**
 * Pets the watchdog (`WATCHDOG=1`); call every {@link watchdogIntervalMs}.
 *
 * @param env - @defaultValue process.env
 * @returns whether it was sent
 */
export function notifyWatchdog(env: NotifyEnv = process.env): boolean {
  return sdNotify("WATCHDOG=1", env);
}

/**
 * Tells systemd the service is shutting down (`STOPPING=1`).
 *
 * @param env - @defaultValue process.env
 * @returns whether it was sent
 */
export function notifyStopping(env: NotifyEnv = process.env): boolean {
  return sdNotify("STOPPING=1", env);
}

/**
 * Sets the free-form status line of `systemctl status` (newlines become spaces).
 *
 * @param env - @defaultValue process.env
 * @returns whether it was sent
 */
export function notifyStatus(status: string, env: NotifyEnv = process.env): boolean {
  return sdNotify(`STATUS=${oneLine(status)}`, env);
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, " ");
}

/**
 * How often to call {@link notifyWatchdog}: half of systemd's `WATCHDOG_USEC`
 * (as sd_watchdog_enabled advises), or undefined when no watchdog is armed for
 * this process (unset, malformed, or `WATCHDOG_PID` names another process).
 *
 * @param env - @defaultValue process.env
 * @param pid - @defaultValue process.pid
 */
export function watchdogIntervalMs(
  env: NotifyEnv = process.env,
  pid: number = process.pid,
): number | undefined {
  const usec = env["WATCHDOG_USEC"];
  if (usec === undefined || !/^\d+$/.test(usec)) return undefined;
  const owner = env["WATCHDOG_PID"];
  if (owner !== undefined && owner !== "" && Number(owner) !== pid) return undefined;
  const ms = Number(usec) / 1000 / 2;
  return ms >= 1 ? Math.floor(ms) : undefined;
}
