/**
 * The inputs exporters give BERT-family models, fed by quantd's classifier on
 * real onnxruntime sessions: `position_ids` as an input (filled as the model's
 * embeddings would compute them), int32 ids, and models without
 * `token_type_ids`. Each variant is checked against the same weights exported
 * the other way (positions computed in the graph, int64 ids), on padded
 * batches, where a wrong position or mask fill changes the logits.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadClassifier } from "../../src/runtime/classifier.ts";
import { architecture } from "../fixtures/encoders/architectures.ts";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { expectClose } from "../helpers/expect-close.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-encoder-inputs-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Lengths differ, so every batch is padded.
const TEXTS = [
  "a gorgeous , witty , seductive movie .",
  "bad",
  "the plot is nothing but boilerplate clichés from start to finish ,",
  "it 's a charming and often affecting journey .",
];

async function logitsOf(model: string): Promise<{ data: Float32Array; inputs: string[]; types: string[] }> {
  const c = await loadClassifier(model, { session: { intraOpThreads: 1 } });
  try {
    const out = await c.logits(TEXTS, { padding: "longest" });
    return { data: out.data, inputs: [...c.session.inputNames], types: c.session.inputs.map((i) => i.type) };
  } finally {
    await c.release();
  }
}

describe("inputs as exporters write them", () => {
  test("XLM-R with a position_ids input: filled after the padding index, as the graph computes it", async () => {
    const arch = architecture("xlm-roberta");
    const withInput = await writeEncoderFixture(arch, join(dir, "xlmr-input"));
    const inGraph = await writeEncoderFixture({ ...arch, positionIdsInput: false }, join(dir, "xlmr-graph"));
    const a = await logitsOf(withInput.model);
    const b = await logitsOf(inGraph.model);
    expect(a.inputs).toEqual(["input_ids", "attention_mask", "position_ids"]);
    expect(b.inputs).toEqual(["input_ids", "attention_mask"]);
    expectClose(a.data, b.data, { atol: 1e-5, rtol: 1e-5 });
  });

  test("XLM-R with a position_ids input and no config.json: its tokenizer says after the padding index", async () => {
    const arch = architecture("xlm-roberta");
    const withConfig = await writeEncoderFixture(arch, join(dir, "xlmr-config"));
    const bare = await writeEncoderFixture(arch, join(dir, "xlmr-no-config"));
    rmSync(join(bare.dir, "config.json"));
    const c = await loadClassifier(bare.model, { session: { intraOpThreads: 1 } });
    try {
      expect(c.tokenizer.positions).toEqual({ kind: "after-padding", paddingIdx: 1 });
    } finally {
      await c.release();
    }
    expectClose((await logitsOf(bare.model)).data, (await logitsOf(withConfig.model)).data, {
      atol: 1e-6,
      rtol: 1e-6,
    });
  });

  test("ELECTRA with a position_ids input: 0, 1, 2, … as BERT-family embeddings number them", async () => {
    const arch = architecture("electra");
    const withInput = await writeEncoderFixture(arch, join(dir, "electra-input"));
    const inGraph = await writeEncoderFixture(
      { ...arch, positionIdsInput: false },
      join(dir, "electra-graph"),
    );
    const a = await logitsOf(withInput.model);
    expect(a.inputs).toContain("position_ids");
    expectClose(a.data, (await logitsOf(inGraph.model)).data, { atol: 1e-5, rtol: 1e-5 });
  });

  test("int32 ids give the logits of the int64 export", async () => {
    const arch = architecture("minilm");
    const int32 = await logitsOf((await writeEncoderFixture(arch, join(dir, "minilm-int32"))).model);
    const int64 = await logitsOf(
      (await writeEncoderFixture({ ...arch, int32: false }, join(dir, "minilm-int64"))).model,
    );
    expect(int32.types).toEqual(["int32", "int32", "int32"]);
    expect(int64.types).toEqual(["int64", "int64", "int64"]);
    expectClose(int32.data, int64.data, { atol: 1e-6, rtol: 1e-6 });
  });

  test("a wrong position fill would show: arange positions on the XLM-R export change its logits", async () => {
    const arch = architecture("xlm-roberta");
    const m = (await writeEncoderFixture(arch, join(dir, "xlmr-wrong"))).model;
    const c = await loadClassifier(m, { session: { intraOpThreads: 1 } });
    try {
      const enc = c.tokenizer.encodeBatch(TEXTS);
      const right = await c.runEncoded(enc);
      const wrong = await c.runEncoded({ ...enc, positions: { kind: "arange" } });
      let maxDiff = 0;
      for (let i = 0; i < right.data.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(right.data[i]! - wrong.data[i]!));
      }
      expect(maxDiff).toBeGreaterThan(1e-2);
    } finally {
      await c.release();
    }
  });

  test("DistilBERT, RoBERTa, MPNet and DeBERTa take only input_ids and attention_mask", async () => {
    for (const name of ["distilbert", "roberta", "mpnet", "deberta-v3"]) {
      const r = await logitsOf((await writeEncoderFixture(name, join(dir, name))).model);
      expect(r.inputs).toEqual(["input_ids", "attention_mask"]);
      expect(r.data.length).toBe(TEXTS.length * 2);
      expect(r.data.every(Number.isFinite)).toBe(true);
    }
  });
});
