/**
 * Prints the arm64 CPU features the kernel (or qemu-user) hands this process in
 * its auxiliary vector, as onnxruntime's kernel selection sees them through
 * getauxval(AT_HWCAP): `{"hwcap": "119ffb", "asimddp": true}`. The emulation
 * test uses it to show that the Cortex-A76 run takes the dot-product int8
 * kernels and the Cortex-A72 run does not.
 */
import { readFileSync } from "node:fs";

const AT_HWCAP = 16;
/** HWCAP_ASIMDDP: SDOT/UDOT. */
const HWCAP_ASIMDDP = 1n << 20n;

/** AT_HWCAP of this process, from `/proc/self/auxv` (pairs of 64-bit words). */
export function readHwcap(): bigint | undefined {
  const auxv = readFileSync("/proc/self/auxv");
  const view = new DataView(auxv.buffer, auxv.byteOffset, auxv.byteLength);
  for (let i = 0; i + 16 <= auxv.byteLength; i += 16) {
    if (view.getBigUint64(i, true) === BigInt(AT_HWCAP)) return view.getBigUint64(i + 8, true);
  }
  return undefined;
}

if (import.meta.main) {
  const hwcap = readHwcap();
  console.log(
    JSON.stringify({
      arch: process.arch,
      hwcap: hwcap?.toString(16),
      asimddp: hwcap !== undefined && (hwcap & HWCAP_ASIMDDP) !== 0n,
    }),
  );
}
