import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { isQuantdError } from "../../src/errors.ts";
import { parseSamplesTsv, readSamplesTsv, sampleLabels } from "../../src/runtime/tsv.ts";
import { repoRoot, shippedDevTsv } from "../helpers/paths.ts";

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "quantd-tsv-"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function write(name: string, content: string | Uint8Array): string {
  const p = join(tmp, name);
  writeFileSync(p, content);
  return p;
}

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (err) {
    if (isQuantdError(err)) return { code: err.code, message: err.message };
    return { code: `non-QuantdError: ${String(err)}`, message: "" };
  }
  return { code: "no error", message: "" };
}

const LABELS = ["negative", "positive"];

describe("readSamplesTsv", () => {
  test("the shipped dev set: 872 labelled rows, header label<TAB>content", async () => {
    const samples = await readSamplesTsv(shippedDevTsv, { requireLabels: true, labels: LABELS });
    expect(samples.length).toBe(872);
    expect(samples[0]).toEqual({ text: "one long string of cliches .", label: 0, line: 2 });
    expect(samples.at(-1)!.line).toBe(873);
    const labels = sampleLabels(samples)!;
    expect([labels.filter((l) => l === 0).length, labels.filter((l) => l === 1).length]).toEqual([428, 444]);
  });

  test("the shipped train pool with CRLF line ends", async () => {
    const samples = await readSamplesTsv(resolve(repoRoot, "calib/samples/sst2-train-4k.tsv"));
    expect(samples.length).toBe(4000);
    expect(samples.every((s) => !s.text.endsWith("\r") && s.label !== undefined)).toBe(true);
  });

  test("sentence<TAB>label order, label names, empty labels, BOM, extra columns", async () => {
    const a = await readSamplesTsv(
      write("swap.tsv", "\ufeffsentence\tlabel\ngreat film .\tpositive\ndull .\t0\nhmm\t\n"),
      {
        labels: LABELS,
      },
    );
    expect(a).toEqual([
      { text: "great film .", label: 1, line: 2 },
      { text: "dull .", label: 0, line: 3 },
      { text: "hmm", line: 4 },
    ]);
    expect(sampleLabels(a)).toBeUndefined();
    const b = await readSamplesTsv(write("glue-test.tsv", "index\tsentence\n0\tfirst one\n1\tsecond one\n"));
    expect(b).toEqual([
      { text: "first one", line: 2 },
      { text: "second one", line: 3 },
    ]);
  });

  test("sentence-only pools", async () => {
    const s = await readSamplesTsv(write("pool.tsv", "sentence\na\n\nb c\n"));
    expect(s).toEqual([
      { text: "a", line: 2 },
      { text: "b c", line: 4 },
    ]);
    const f = await failure(readSamplesTsv(write("pool2.tsv", "sentence\na\n"), { requireLabels: true }));
    expect(f.code).toBe("DATA_MALFORMED");
    expect(f.message).toContain(":1:");
  });

  test("errors name the file and line", async () => {
    const cases: [string, string | Uint8Array, string, number, { requireLabels?: boolean }?][] = [
      ["cols.tsv", "label\tsentence\n0\tok\n1\ttoo\tmany\n", "DATA_MALFORMED", 3],
      ["cols2.tsv", "label\tsentence\n0\tok\nno tab here\n", "DATA_MALFORMED", 3],
      ["label.tsv", "label\tsentence\n0\tok\n1.5\tnope\n", "DATA_MALFORMED", 3],
      ["neg.tsv", "label\tsentence\n-1\tnope\n", "DATA_MALFORMED", 2],
      ["name.tsv", "label\tsentence\nneutral\tnope\n", "DATA_MALFORMED", 2],
      ["range.tsv", "label\tsentence\n2\tnope\n", "DATA_MISMATCH", 2],
      ["blank.tsv", "label\tsentence\n0\tok\n1\t   \n", "TEXT_EMPTY", 3],
      ["nolabel.tsv", "label\tsentence\n0\tok\n\tunlabelled\n", "DATA_MALFORMED", 3, { requireLabels: true }],
      ["header.tsv", "foo\tbar\n0\tok\n", "DATA_MALFORMED", 1],
      ["big.tsv", `sentence\nok\n${"x".repeat(70_000)}\n`, "TEXT_TOO_LARGE", 3],
      [
        "utf8.tsv",
        new Uint8Array([...new TextEncoder().encode("label\tsentence\n0\tok\n1\tbad "), 0xc3, 0x28, 0x0a]),
        "TEXT_INVALID_UTF8",
        3,
      ],
    ];
    for (const [name, content, code, line, opts] of cases) {
      const f = await failure(readSamplesTsv(write(name, content), { labels: LABELS, ...opts }));
      expect(`${name}: ${f.code}`).toBe(`${name}: ${code}`);
      expect(f.message).toContain(`${name}:${line}`);
    }
  });

  test("empty files and missing files", async () => {
    expect((await failure(readSamplesTsv(write("empty.tsv", "")))).code).toBe("DATA_EMPTY");
    expect((await failure(readSamplesTsv(write("headeronly.tsv", "label\tsentence\n")))).code).toBe(
      "DATA_EMPTY",
    );
    expect((await failure(readSamplesTsv(join(tmp, "absent.tsv")))).code).toBe("FILE_NOT_FOUND");
    mkdirSync(join(tmp, "adir.tsv"));
    expect((await failure(readSamplesTsv(join(tmp, "adir.tsv")))).code).toBe("FILE_UNREADABLE");
  });

  test("parseSamplesTsv takes strings too", () => {
    expect(parseSamplesTsv("text\nhello\n", "inline")).toEqual([{ text: "hello", line: 2 }]);
    let err: unknown;
    try {
      parseSamplesTsv("label\ttext\nx\thello\n", "inline");
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "DATA_MALFORMED")).toBe(true);
  });
});
