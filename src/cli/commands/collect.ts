/**
 * `quantd collect`: adds the texts of a sample file to the store's sample pool
 * (the calibration and validation source of the recalibration job). The pool
 * stays within its bounds by stratified reservoir sampling, so collecting a
 * large file keeps a sample representative of it rather than its first rows.
 */
import { checkSampleInputs } from "../../quant/task-validate.ts";
import { isPairFile, readInputsTsv } from "../../runtime/input-tsv.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import type { SampleInput } from "../../store/samples.ts";
import { databasePath } from "../../store/store.ts";
import { isQuantdError, QuantdError } from "../../errors.ts";
import type { Command, ParsedFlags } from "../command.ts";
import { AGENT_STATE_FLAGS, agentConfigFromFlags, openAgentStore, servedTask } from "../agent-state.ts";
import { JSON_FLAG } from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagInt, flagString, usageError } from "../parse.ts";
import { formatBytes } from "../render.ts";

/** The sample file: `quantd collect FILE` or `quantd collect --file FILE`, not both. @throws USAGE */
function sampleFile(flags: ParsedFlags, positionals: readonly string[]): string {
  const flag = flagString(flags, "file");
  if (flag === undefined) {
    const [file, ...rest] = positionals;
    if (file === undefined || file === "")
      throw usageError("collect needs a sample file: quantd collect FILE.tsv (or --file FILE.tsv)");
    expectNoPositionals(rest);
    return file;
  }
  if (positionals.length > 0)
    throw usageError(`give the sample file once: --file ${flag} or ${positionals[0]}, not both`);
  return flag;
}

/** A sample of a file and its line there. */
type FileSample = SampleInput & { line: number };

/**
 * The samples of a file: a pair file (two text columns, as `quantd infer` reads them) gives pairs, whose
 * `label` is kept when it is a class id; any other file is read as `label<TAB>sentence`.
 */
async function readSampleInputs(file: string): Promise<FileSample[]> {
  if (await isPairFile(file)) {
    return (await readInputsTsv(file)).map((r) => ({
      text: typeof r.input === "string" ? r.input : r.input[0],
      pair: typeof r.input === "string" ? null : r.input[1],
      label: r.label !== undefined && /^\d+$/.test(r.label) ? Number(r.label) : null,
      line: r.line,
    }));
  }
  return (await readSamplesTsv(file)).map((s) => ({ text: s.text, label: s.label ?? null, line: s.line }));
}

/**
 * Refuses a file with a sample the served model would refuse (a pair for a
 * single-text classifier, one text for a pair classifier): stored, it would
 * fail every recalibration (the quantizer refuses it too) until evicted.
 *
 * @throws DATA_MISMATCH naming the first such sample's file and line and the model's task
 */
function checkServedForm(
  samples: readonly FileSample[],
  file: string,
  served: Awaited<ReturnType<typeof servedTask>>,
) {
  if (served === undefined) return;
  const asQuant = samples.map((s) => ({
    text: s.text,
    ...(s.pair == null ? {} : { pair: s.pair }),
    origin: `${file}:${s.line}`,
  }));
  try {
    checkSampleInputs(served.task, asQuant, served.model);
  } catch (err) {
    if (!isQuantdError(err, "DATA_MISMATCH")) throw err;
    throw new QuantdError("DATA_MISMATCH", `${err.message}; nothing from ${file} was added`, {
      details: { ...err.details, file },
    });
  }
}

/** The `collect` command. */
export const collectCommand: Command = {
  name: "collect",
  summary: "add the texts of a sample file to the store's sample pool",
  usage:
    "FILE.tsv | --file FILE.tsv [--state-dir DIR] [--source NAME] [--max-rows N] [--max-bytes N] [--tokenizer DIR] [--json]",
  description:
    "Reads a tab-separated sample file (given as the argument or with --file) with a header (`label<TAB>sentence`, or a `text` column, label " +
    "optional) and adds its texts to the sample pool in <state-dir>/quantd.db, creating the database if " +
    "needed. Texts already in the pool (same text up to whitespace and Unicode normalization) are dropped " +
    "as duplicates. The pool is bounded by --max-rows and --max-bytes (UTF-8 bytes of the texts); beyond " +
    "them it keeps a random sample stratified by token length, so later samples are not favoured over " +
    "earlier ones; bounds lower than the pool's size evict down to them. Token lengths come from the tokenizer the agent serves with (the one the store's active version was registered with; with a configured model, or none stored, the one beside the configured model) unless --tokenizer is given.\n\n" +
    "A file whose rows are not the form the agent's model takes (pairs for a single-text classifier, single texts " +
    "for a pair classifier) is refused with DATA_MISMATCH naming the first such line, and nothing of it is added: " +
    "the next recalibration would refuse those samples.\n\n" +
    "Prints how many samples were added, dropped as duplicates, evicted from the pool and not kept, then the " +
    "pool's size. The whole file is one transaction: on any error nothing is added.",
  flags: [
    { name: "file", short: "f", type: "string", value: "FILE.tsv", description: "sample file to ingest" },
    ...AGENT_STATE_FLAGS,
    {
      name: "source",
      type: "string",
      value: "NAME",
      description: "source recorded with each sample (letters, digits, . _ : -)",
      default: "file",
    },
    {
      name: "max-rows",
      type: "string",
      value: "N",
      description: "most samples the pool keeps",
      default: "the agent's samplePool.maxRows (from the board profile)",
    },
    {
      name: "max-bytes",
      type: "string",
      value: "N",
      description: "most UTF-8 text bytes the pool keeps",
      default: "the agent's samplePool.maxBytes (from the board profile)",
    },
    {
      name: "tokenizer",
      type: "string",
      value: "DIR",
      description: "directory with tokenizer.json, for token lengths",
      default: "the tokenizer the agent serves with",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    const file = sampleFile(ctx.flags, ctx.positionals);
    const config = agentConfigFromFlags(ctx.flags);
    const source = flagString(ctx.flags, "source", "file")!;
    const maxRows = flagInt(ctx.flags, "max-rows", { min: 1, max: 10_000_000 }, config.samplePool.maxRows);
    const maxBytes = flagInt(ctx.flags, "max-bytes", { min: 1, max: 2 ** 40 }, config.samplePool.maxBytes);
    const json = flagBool(ctx.flags, "json");

    const started = performance.now();
    const samples = await readSampleInputs(file);
    const tokenizerDir = flagString(ctx.flags, "tokenizer");
    const dbPath = databasePath(config.stateDir);
    const store = await openAgentStore(config, {
      maxRows,
      maxBytes,
      ...(tokenizerDir === undefined ? {} : { tokenizerDir }),
    });
    try {
      checkServedForm(samples, file, await servedTask(config, store));
      const result = store.samples.add(
        samples.map(({ line: _, ...s }) => s),
        { source },
      );
      const stats = store.samples.stats();
      const seconds = (performance.now() - started) / 1000;
      if (json) {
        ctx.out(
          JSON.stringify({
            database: dbPath,
            file,
            read: samples.length,
            ...result,
            seconds,
            pool: { rows: stats.rows, bytes: stats.bytes, seen: stats.seen, maxRows, maxBytes },
            buckets: stats.buckets,
          }),
        );
        return 0;
      }
      ctx.out(
        `read ${samples.length} samples from ${file}: added ${result.added}, duplicates ${result.duplicates}, ` +
          `evicted ${result.evicted}, not kept ${result.rejected}`,
      );
      ctx.out(
        `pool: ${stats.rows} samples (max ${maxRows}), ${formatBytes(stats.bytes)} of text (max ${formatBytes(maxBytes)}), ` +
          `${stats.seen} distinct seen`,
      );
      ctx.out(`database: ${dbPath} (${seconds.toFixed(2)} s)`);
      return 0;
    } finally {
      store.close();
    }
  },
};
