/**
 * The few glibc calls the agent makes, through `bun:ffi`: the one file that
 * binds libc. Each call is a no-op (returns false) off glibc (musl, macOS) or
 * when libc cannot be loaded, so callers treat them as best effort.
 */

interface Libc {
  malloc_trim(pad: number): number;
  mallopt(param: number, value: number): number;
  prctl(option: number, arg2: number): number;
}

let libc: Libc | null | undefined;

async function load(): Promise<Libc | null> {
  if (libc !== undefined) return libc;
  try {
    if (process.platform !== "linux") throw new Error("not Linux");
    const { dlopen, FFIType } = await import("bun:ffi");
    const lib = dlopen("libc.so.6", {
      malloc_trim: { args: [FFIType.u64], returns: FFIType.i32 },
      mallopt: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      prctl: { args: [FFIType.i32, FFIType.u64], returns: FFIType.i32 },
    });
    libc = {
      malloc_trim: (pad) => lib.symbols.malloc_trim(pad),
      mallopt: (param, value) => lib.symbols.mallopt(param, value),
      prctl: (option, arg2) => lib.symbols.prctl(option, arg2),
    };
  } catch {
    libc = null;
  }
  return libc;
}

/** mallopt's parameter number for the mmap threshold (glibc's malloc.h). */
const M_MMAP_THRESHOLD = -3;
/** prctl's option that names the signal a process gets when its parent dies (linux/prctl.h). */
const PR_SET_PDEATHSIG = 1;
const SIGKILL = 9;

/** `malloc_trim(0)`: returns the free pages of every malloc arena to the system. */
export async function mallocTrim(): Promise<() => boolean> {
  const c = await load();
  return c === null
    ? () => false
    : () => {
        c.malloc_trim(0);
        return true;
      };
}

/** Fixes glibc's mmap threshold (it otherwise grows after each large free, up to 32 MB). */
export async function fixMmapThreshold(bytes: number): Promise<boolean> {
  const c = await load();
  return c !== null && c.mallopt(M_MMAP_THRESHOLD, bytes) === 1;
}

/**
 * Asks the kernel to SIGKILL this process when its parent dies. Unlike a
 * watch on a pipe, it works while the process computes without returning to
 * its event loop (an onnxruntime run is synchronous).
 */
export async function dieWithParent(): Promise<boolean> {
  const c = await load();
  return c !== null && c.prctl(PR_SET_PDEATHSIG, SIGKILL) === 0;
}
