/**
 * Pairs in the sample store, as a pair classifier's inputs are: stored as two
 * texts (a schema-2 database gains the column, its rows single texts),
 * deduplicated as pairs, stratified by the tokens of both, picked for
 * calibration and validation as pairs (a pair classifier quantized from the
 * store is fed pairs), and captured as pairs from live traffic.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { isQuantdError } from "../../src/errors.ts";
import { runQuantization } from "../../src/quant/pipeline.ts";
import { MIGRATIONS, migrate, SCHEMA_VERSION } from "../../src/store/migrations.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import { openStore } from "../../src/store/store.ts";
import { corpusSentences } from "../fixtures/encoders/tokenizers.ts";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
import { envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";
import { call, testConfig } from "./agent-harness.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-store-pairs-"));
let pairModel: string;
afterAll(() => rmSync(root, { recursive: true, force: true }));
beforeAll(async () => {
  pairModel = (await writeTaskFixture("pair-classification", join(root, "pair"))).dir;
});

/** Words as tokens: enough to tell a pair's length from its first text's. */
const words = (t: string, p?: string) =>
  t.split(" ").length + (p === undefined ? 2 : p.split(" ").length + 3);

describe("the sample store", () => {
  test("a schema-2 database gains the pair column; its rows stay single texts", async () => {
    const path = join(root, "old.db");
    const db = await openSqlDatabase(path);
    migrate(db, MIGRATIONS.slice(0, 2));
    db.prepare(
      "INSERT INTO samples (text, token_count, bytes, bucket, source, label, content_hash, created_at) VALUES ('old text', 3, 8, 0, 'file', NULL, x'00', 0)",
    ).run();
    db.close();
    const store = await openStore(path, { samples: { countTokens: words } });
    try {
      expect(store.schemaVersion).toBe(SCHEMA_VERSION);
      expect(store.samples.get(1)).toMatchObject({ text: "old text", pair: null });
    } finally {
      store.close();
    }
  });

  test("pairs are kept as pairs, deduplicated as pairs, bucketed by both texts' tokens", async () => {
    const store = await openStore(join(root, "pairs.db"), { samples: { countTokens: words } });
    try {
      const long = Array.from({ length: 20 }, (_, i) => `w${i}`).join(" ");
      const r = store.samples.add(
        [
          { text: "a b", pair: long },
          { text: "a b", pair: long },
          { text: long, pair: "a b" },
          { text: "a b" },
          { text: "a", pair: "b c" },
          { text: "a b", pair: "c" },
        ],
        { source: "file" },
      );
      expect(r).toMatchObject({ added: 5, duplicates: 1 });
      const rows = store.samples.pick({ n: 10, seed: 1 });
      const first = rows.find((s) => s.text === "a b" && s.pair === long)!;
      // 2 + 20 words + 3 specials: the pair's bucket, not the 4 tokens of its first text alone.
      expect(first.tokenCount).toBe(25);
      expect(first.bytes).toBe(3 + long.length);
      expect(rows.find((s) => s.text === "a b" && s.pair === null)?.tokenCount).toBe(4);
      expect(() => store.samples.add([{ text: "a", pair: " " }], { source: "file" })).toThrow(
        expect.objectContaining({ code: "TEXT_NOT_STRING" }),
      );
    } finally {
      store.close();
    }
  });

  test("a pair classifier quantized from the store is calibrated and validated on its pairs", async () => {
    const path = join(root, "pool.db");
    const store = await openStore(path, { samples: { countTokens: words } });
    const s = corpusSentences();
    store.samples.add(
      Array.from({ length: 900 }, (_, i) => ({ text: s[2 * i]!, pair: s[2 * i + 1]! })),
      { source: "file" },
    );
    try {
      const run = runQuantization({
        model: pairModel,
        calib: {
          name: path,
          count: () => store.samples.count(),
          pickDisjoint: (c, v, seed) => store.samples.pickDisjoint(c, v, seed),
        },
        out: join(root, "pair-int8.onnx"),
        validationSamples: 700,
        trialBudget: 0,
        threads: 1,
      });
      // Met or not, the model ran on pairs: single texts would be DATA_MISMATCH before any figure.
      const outcome = await run.then(
        (r) => r.report.metrics,
        (err: unknown) => {
          if (isQuantdError(err, "GATE_NOT_MET")) return undefined;
          throw err;
        },
      );
      if (outcome !== undefined)
        expect(outcome).toMatchObject({ n: 700, task: { kind: "pair-classification" } });
    } finally {
      store.close();
    }
  }, 120_000);
});

test("live pairs are captured as pairs", async () => {
  const agent = await startAgent(
    testConfig(
      join(root, "agent"),
      { QUANTD_CAPTURE_ENABLED: "true", QUANTD_CAPTURE_RATE: "1" },
      {
        model: join(pairModel, "model.onnx"),
      },
    ),
  );
  try {
    const r = await call(agent.config.socketPath, "/v1/classify", {
      body: JSON.stringify({ pairs: [["a wonderful film", "a dull mess"]] }),
    });
    expect(r.status).toBe(200);
    let stored: { text: string; pair: string | null }[] = [];
    for (let i = 0; i < 50 && stored.length === 0; i++) {
      await Bun.sleep(100);
      stored = agent.store.samples.pick({ n: 10, seed: 1 }).filter((x) => x.pair !== null);
    }
    expect(stored).toEqual([expect.objectContaining({ text: "a wonderful film", pair: "a dull mess" })]);
  } finally {
    await agent.stop();
  }
});

test("quantd collect stores a pair file's rows as pairs", async () => {
  const file = join(root, "pairs.tsv");
  await Bun.write(
    file,
    "premise\thypothesis\tlabel\na wonderful film\ta dull mess\t1\nit rains\tit pours\t0\n",
  );
  const stateDir = join(root, "collect");
  const run = await runQuantd(
    ["collect", "--file", file, "--state-dir", stateDir, "--tokenizer", pairModel, "--json"],
    { env: { ...envWithoutQuantd(), QUANTD_MODEL: join(pairModel, "model.onnx") } },
  );
  expect(run.stderr).toBe("");
  expect(JSON.parse(run.stdout)).toMatchObject({ read: 2, added: 2 });
  const store = await openStore(join(stateDir, "quantd.db"));
  try {
    const rows = store.samples.pick({ n: 5, seed: 1 }).map((s) => [s.text, s.pair, s.label]);
    expect(rows.sort()).toEqual([
      ["a wonderful film", "a dull mess", 1],
      ["it rains", "it pours", 0],
    ]);
  } finally {
    store.close();
  }
});

test("quantd collect refuses the form the served model refuses, naming the file's line; nothing of the file is added", async () => {
  const single = (await writeEncoderFixture("bert", join(root, "single"))).dir;
  const pairs = join(root, "refused-pairs.tsv");
  await Bun.write(pairs, "premise\thypothesis\nit rains\tit pours\n");
  const texts = join(root, "refused-texts.tsv");
  await Bun.write(texts, "label\tsentence\n1\ta wonderful film\n0\ta dull mess\n");
  const collect = (file: string, model: string, stateDir: string) =>
    runQuantd(["collect", file, "--state-dir", join(root, stateDir), "--json"], {
      env: { ...envWithoutQuantd(), QUANTD_MODEL: join(model, "model.onnx") },
    });
  const pooled = async (stateDir: string) => {
    const store = await openStore(join(root, stateDir, "quantd.db"));
    try {
      return store.samples.count();
    } finally {
      store.close();
    }
  };

  // A single-text classifier's pool: its texts go in, a pair file does not (its recalibration would refuse it).
  expect(JSON.parse((await collect(texts, single, "single-state")).stdout)).toMatchObject({ added: 2 });
  const toSingle = await collect(pairs, single, "single-state");
  expect(toSingle.code).not.toBe(0);
  expect(toSingle.stdout + toSingle.stderr).toContain("DATA_MISMATCH");
  expect(toSingle.stdout + toSingle.stderr).toMatch(
    /refused-pairs\.tsv:2 is a pair of texts, but \S+ is a classification model/,
  );
  expect(toSingle.stdout + toSingle.stderr).toContain(`nothing from ${pairs} was added`);
  expect(await pooled("single-state")).toBe(2);

  // A pair classifier's pool: single texts are refused the same way.
  const toPair = await collect(texts, pairModel, "pair-state");
  expect(toPair.code).not.toBe(0);
  expect(toPair.stdout + toPair.stderr).toMatch(
    /refused-texts\.tsv:2 is one text, but \S+ is a pair-classification model/,
  );
  expect(await pooled("pair-state")).toBe(0);
});
