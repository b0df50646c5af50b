/**
 * A child agent for the store-and-forward test: opens the store at argv[2],
 * starts a fleet link to argv[3] and queues reports `r-{from}` … `r-{to-1}`
 * (argv[4], argv[5]) every argv[6] ms, printing `enq N` once each is committed
 * to the outbox. Then waits for the outbox to empty and prints `flushed`.
 * The parent kills it with SIGKILL mid-stream and starts it again.
 */
import { createFleetLink } from "../../src/fleet/device/link.ts";
import { openStore } from "../../src/store/store.ts";

const [dbPath, broker, fromText, toText, delayText] = process.argv.slice(2);
const from = Number(fromText);
const to = Number(toText);
const delayMs = Number(delayText);
const store = await openStore(dbPath!);
const refuse = async (): Promise<never> => {
  throw new Error("no commands in this test");
};
const link = createFleetLink(
  { broker: broker!, fleet: "loss", device: "child", willDelaySec: 5 },
  {
    store,
    handler: {
      recalibrate: refuse,
      quantizeDynamic: refuse,
      bench: refuse,
      rollback: refuse,
      status: refuse,
      setConfig: refuse,
      collect: refuse,
    },
    status: () => ({ agentVersion: "test", model: null }),
  },
);
for (let i = from; i < to; i++) {
  link.report({
    id: `r-${i}`,
    jobId: `r-${i}`,
    type: "bench",
    state: "SUCCEEDED",
    result: { i },
    startedAt: null,
    finishedAt: Date.now(),
  });
  process.stdout.write(`enq ${i}\n`);
  await Bun.sleep(delayMs);
}
while (!(await link.flushed(1000))) {
  // keep waiting: the parent decides when to give up
}
process.stdout.write("flushed\n");
await link.stop({ flushMs: 0 });
store.close();
