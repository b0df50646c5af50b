/**
 * Sample files: tab-separated text with a header naming the columns, as GLUE
 * ships SST-2 (`label<TAB>sentence`). Used for evaluation sets and for seeding
 * the calibration pool. Reading is strict: a bad byte, a wrong column count or
 * a bad label stops with the file and line rather than silently skewing a
 * calibration or an accuracy figure.
 */
import { readFile } from "node:fs/promises";
import { QuantdError } from "../errors.ts";
import { decodeUtf8Strict, firstInvalidUtf8Offset, type ValidateTextOptions, validateText } from "./text.ts";

/** One input text, with its label id when the file has one. */
export interface TsvSample {
  text: string;
  /** Class id (index into the model's labels). */
  label?: number;
  /** 1-based line in the file (the header is line 1). */
  line: number;
}

/** Options for {@link readSamplesTsv} and {@link parseSamplesTsv}. */
export interface ReadSamplesOptions {
  /** Refuse rows (and files) without labels. @defaultValue false */
  requireLabels?: boolean;
  /**
   * Label names, index = id, so that a label column may hold names
   * (`positive`) as well as ids (`1`); ids must then be below its length.
   */
  labels?: readonly string[];
  /** Largest accepted text, in UTF-8 bytes. @defaultValue 64 KiB */
  maxTextBytes?: number;
}

/** Header names accepted for the text column. */
export const TEXT_COLUMN_NAMES: readonly string[] = ["sentence", "text", "content"];
/** Header name of the label column. */
export const LABEL_COLUMN_NAME = "label";

const INTEGER = /^\d+$/;

function malformed(where: string, message: string, line: number): QuantdError {
  return new QuantdError("DATA_MALFORMED", `${where}:${line}: ${message}`, {
    details: { file: where, line },
  });
}

/**
 * Parses the contents of a sample file. See {@link readSamplesTsv} for the format.
 *
 * @param where - the file name, for error messages
 * @throws as {@link readSamplesTsv}, except FILE_NOT_FOUND
 */
export function parseSamplesTsv(
  content: Uint8Array | string,
  where: string,
  opts: ReadSamplesOptions = {},
): TsvSample[] {
  let text: string;
  if (typeof content === "string") text = content.charCodeAt(0) === 0xfeff ? content.slice(1) : content;
  else {
    try {
      text = decodeUtf8Strict(content, where);
    } catch (err) {
      const offset = firstInvalidUtf8Offset(content);
      let line = 1;
      for (let i = 0; i < offset; i++) if (content[i] === 0x0a) line++;
      throw new QuantdError(
        "TEXT_INVALID_UTF8",
        `${where}:${line}: not valid UTF-8 (byte offset ${offset})`,
        {
          cause: err,
          details: { file: where, line, offset },
        },
      );
    }
  }

  const lines = text.split("\n");
  // A file saved on Windows ends lines with CRLF (the SST-2 train.tsv does).
  for (let i = 0; i < lines.length; i++) if (lines[i]!.endsWith("\r")) lines[i] = lines[i]!.slice(0, -1);

  const header = lines[0] ?? "";
  if (header.trim() === "" && lines.every((l) => l.trim() === "")) {
    throw new QuantdError("DATA_EMPTY", `${where} is empty`, { details: { file: where } });
  }
  const columns = header.split("\t").map((c) => c.trim().toLowerCase());
  const textCol = columns.findIndex((c) => TEXT_COLUMN_NAMES.includes(c));
  const labelCol = columns.indexOf(LABEL_COLUMN_NAME);
  if (textCol < 0 || columns.filter((c) => TEXT_COLUMN_NAMES.includes(c)).length > 1) {
    throw malformed(
      where,
      `the header must name one text column (${TEXT_COLUMN_NAMES.join(", ")}) and optionally a ${LABEL_COLUMN_NAME} column, tab-separated, e.g. "label<TAB>sentence"; got ${JSON.stringify(header.slice(0, 80))}`,
      1,
    );
  }
  if (opts.requireLabels === true && labelCol < 0) {
    throw malformed(where, `labels are required but the header has no ${LABEL_COLUMN_NAME} column`, 1);
  }

  const labelIds = new Map<string, number>();
  for (const [i, name] of (opts.labels ?? []).entries()) labelIds.set(name, i);
  const textOpts: ValidateTextOptions = {};
  if (opts.maxTextBytes !== undefined) textOpts.maxBytes = opts.maxTextBytes;

  const samples: TsvSample[] = [];
  for (let i = 1; i < lines.length; i++) {
    const raw = lines[i]!;
    // Blank lines (typically the one after the final newline) hold no sample.
    if (raw === "") continue;
    const line = i + 1;
    const fields = raw.split("\t");
    if (fields.length !== columns.length) {
      throw malformed(
        where,
        `expected ${columns.length} tab-separated columns (${columns.join(", ")}), found ${fields.length}` +
          (fields.length > columns.length ? " (a tab inside the text?)" : ""),
        line,
      );
    }
    let text: string;
    try {
      text = validateText(fields[textCol], textOpts);
    } catch {
      // Build the located message only on failure: a 67k-row pool should not format 67k names.
      text = validateText(fields[textCol], { ...textOpts, what: `${where}:${line}` });
    }
    const sample: TsvSample = { text, line };
    if (labelCol >= 0) {
      const value = fields[labelCol]!.trim();
      if (value !== "") sample.label = parseLabel(value, labelIds, opts.labels, where, line);
    }
    if (sample.label === undefined && opts.requireLabels === true) {
      throw malformed(where, "labels are required but this row has none", line);
    }
    samples.push(sample);
  }
  if (samples.length === 0) {
    throw new QuantdError("DATA_EMPTY", `${where} has a header but no samples`, { details: { file: where } });
  }
  return samples;
}

function parseLabel(
  value: string,
  byName: ReadonlyMap<string, number>,
  names: readonly string[] | undefined,
  where: string,
  line: number,
): number {
  const named = byName.get(value);
  if (named !== undefined) return named;
  if (!INTEGER.test(value)) {
    const known = names === undefined ? "" : ` or one of ${names.join(", ")}`;
    throw malformed(where, `label ${JSON.stringify(value)} is not a non-negative integer${known}`, line);
  }
  const id = Number(value);
  if (names !== undefined && id >= names.length) {
    throw new QuantdError(
      "DATA_MISMATCH",
      `${where}:${line}: label ${id} is out of range for ${names.length} labels (${names.join(", ")})`,
      { details: { file: where, line, label: id } },
    );
  }
  if (!Number.isSafeInteger(id)) throw malformed(where, `label ${value} is too large`, line);
  return id;
}

/**
 * Reads a sample file: UTF-8, tab-separated, with a header line naming the
 * columns. The header has a text column (`sentence`, `text` or `content`) and,
 * optionally, a `label` column, in either order (other columns are allowed and
 * ignored). A label may be empty (unlabelled row), a class id, or a label name
 * from `opts.labels`. Lines may end with LF or CRLF; a UTF-8 BOM is allowed.
 *
 * @throws FILE_NOT_FOUND when the file does not exist
 * @throws FILE_UNREADABLE when it cannot be read
 * @throws TEXT_INVALID_UTF8 naming the line of the first invalid byte
 * @throws DATA_MALFORMED (`file:line`) for a bad header, a wrong column count, a bad label or a missing required label
 * @throws DATA_MISMATCH when a label id is out of range of `opts.labels`
 * @throws DATA_EMPTY when the file holds no samples
 * @throws TEXT_EMPTY / TEXT_TOO_LARGE (`file:line`) for an empty or oversized text
 */
export async function readSamplesTsv(path: string, opts: ReadSamplesOptions = {}): Promise<TsvSample[]> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new QuantdError("FILE_NOT_FOUND", `sample file ${path} does not exist`, {
        cause: err,
        details: { path },
      });
    }
    throw new QuantdError("FILE_UNREADABLE", `cannot read sample file ${path}`, {
      cause: err,
      details: { path },
    });
  }
  return parseSamplesTsv(bytes, path, opts);
}

/** Label ids of samples, or undefined unless every sample has one. */
export function sampleLabels(samples: readonly TsvSample[]): number[] | undefined {
  const labels: number[] = [];
  for (const s of samples) {
    if (s.label === undefined) return undefined;
    labels.push(s.label);
  }
  return labels;
}
