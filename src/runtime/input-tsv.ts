/**
 * Input files of any task: tab-separated, a header naming one text column
 * (`sentence`, `text`, `content`) or two (a pair, named as GLUE and the NLI
 * sets name them: `sentence1`/`sentence2`, `question1`/`question2`,
 * `question`/`sentence`, `premise`/`hypothesis`, `text_a`/`text_b`,
 * `text`/`text_pair`), and optionally a `label` column kept as written (a
 * class name or id, several names joined by `,` for multi-label, a number for
 * regression) and an `entities` column (`TYPE@start:end …`, token classification). Strict like the sample reader: a bad byte, a wrong column count
 * or an empty text names the file and line.
 */
import { readFile } from "node:fs/promises";
import { QuantdError } from "../errors.ts";
import { decodeUtf8Strict, validateText } from "./text.ts";
import type { TextInput } from "./tokenizer.ts";
import { TEXT_COLUMN_NAMES } from "./tsv.ts";

/** Header pairs read as the two texts of a pair, first column first. */
export const PAIR_COLUMN_NAMES: readonly (readonly [string, string])[] = [
  ["sentence1", "sentence2"],
  ["question1", "question2"],
  ["question", "sentence"],
  ["premise", "hypothesis"],
  ["text_a", "text_b"],
  ["text", "text_pair"],
];

/** One row of an input file. */
export interface InputRow {
  input: TextInput;
  /** The `label` column as written, when the file has one. */
  label?: string;
  /** The `entities` column as written (token classification's gold: `TYPE@start:end …`). */
  entities?: string;
  /** 1-based line (the header is line 1). */
  line: number;
}

/**
 * Parses an input file's contents.
 *
 * @throws TEXT_INVALID_UTF8, DATA_MALFORMED (header, column count, empty text), DATA_EMPTY
 */
export function parseInputsTsv(content: Uint8Array, where: string): InputRow[] {
  let text = decodeUtf8Strict(content, where);
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  if (lines.at(-1) === "") lines.pop();
  const header = (lines[0] ?? "").split("\t");
  const col = (name: string) => header.indexOf(name);
  const pair = PAIR_COLUMN_NAMES.find(([a, b]) => col(a) >= 0 && col(b) >= 0);
  const single = TEXT_COLUMN_NAMES.find((n) => col(n) >= 0);
  if (pair === undefined && single === undefined) {
    throw new QuantdError(
      "DATA_MALFORMED",
      `${where}:1: the header names no text column: it has ${header.join(", ") || "nothing"}; expected one of ` +
        `${TEXT_COLUMN_NAMES.join(", ")}, or a pair (${PAIR_COLUMN_NAMES.map((p) => p.join("/")).join(", ")})`,
      { details: { file: where, line: 1 } },
    );
  }
  const labelCol = col("label");
  const entitiesCol = col("entities");
  const rows: InputRow[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = i + 1;
    if (lines[i] === "") continue;
    const cells = lines[i]!.split("\t");
    if (cells.length !== header.length) {
      throw new QuantdError(
        "DATA_MALFORMED",
        `${where}:${line}: ${cells.length} columns, the header has ${header.length}`,
        { details: { file: where, line } },
      );
    }
    const cell = (name: string): string =>
      validateText(cells[col(name)], { what: `${where}:${line} ${name}` });
    const row: InputRow = {
      input: pair !== undefined ? [cell(pair[0]), cell(pair[1])] : cell(single!),
      line,
    };
    if (labelCol >= 0) row.label = cells[labelCol]!;
    if (entitiesCol >= 0) row.entities = cells[entitiesCol]!;
    rows.push(row);
  }
  if (rows.length === 0) throw new QuantdError("DATA_EMPTY", `${where} has a header but no rows`);
  return rows;
}

/** Whether a TSV's header names the two text columns of a pair (its first 4 KiB are read). */
export async function isPairFile(path: string): Promise<boolean> {
  let head: string;
  try {
    head = (await Bun.file(path).slice(0, 4096).text()).split("\n")[0] ?? "";
  } catch {
    return false; // The reader that follows names what is wrong with the file.
  }
  const cols = head
    .replace(/\r$/, "")
    .replace(/^\ufeff/, "")
    .split("\t");
  return PAIR_COLUMN_NAMES.some(([a, b]) => cols.includes(a) && cols.includes(b));
}

/**
 * Reads an input file (see {@link parseInputsTsv}).
 *
 * @throws FILE_NOT_FOUND, FILE_UNREADABLE, and as {@link parseInputsTsv}
 */
export async function readInputsTsv(path: string): Promise<InputRow[]> {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await readFile(path));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new QuantdError(code === "ENOENT" ? "FILE_NOT_FOUND" : "FILE_UNREADABLE", `cannot read ${path}`, {
      cause: err,
      details: { path },
    });
  }
  return parseInputsTsv(bytes, path);
}
