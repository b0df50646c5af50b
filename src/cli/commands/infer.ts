/**
 * `quantd infer`: runs a model of any task on texts or pairs and prints what
 * the task gives: a label (classification, pairs), the labels that are on
 * (multi-label), a value (regression), entities with character offsets (token
 * classification) or a vector (embeddings). Inputs come from arguments, stdin
 * (one per line; a tab separates a pair) or a TSV file with one or two text
 * columns; they are checked against the task before anything runs.
 */
import { QuantdError } from "../../errors.ts";
import { AGGREGATIONS, type Aggregation } from "../../runtime/entities.ts";
import { readInputsTsv } from "../../runtime/input-tsv.ts";
import { inputsOf, pairOnTextHint, taskModelNoun } from "../../runtime/task.ts";
import { publicResult, type TaskResult } from "../../runtime/task-model.ts";
import { decodeUtf8Strict, validateText } from "../../runtime/text.ts";
import type { TextInput } from "../../runtime/tokenizer.ts";
import type { Command } from "../command.ts";
import { batchFlag, INFERENCE_FLAGS, JSON_FLAG, openTaskModel, TASK_FLAGS } from "../model-flags.ts";
import { flagBool, flagChoice, flagString, usageError } from "../parse.ts";
import { SHIPPED_MODEL } from "../paths.ts";
import { stdinLines } from "./classify.ts";

/** Longest text echoed in human output; `--json` always carries the whole text. */
const SHOWN_TEXT_CHARS = 80;
/** Vector components shown in human output. */
const SHOWN_COMPONENTS = 4;

function shown(input: TextInput): string {
  const text = typeof input === "string" ? input : `${input[0]} ⟂ ${input[1]}`;
  return text.length <= SHOWN_TEXT_CHARS ? text : `${text.slice(0, SHOWN_TEXT_CHARS - 1)}…`;
}

/** Arguments taken one by one, or two by two with `--pair`. */
function fromArguments(positionals: readonly string[], pair: boolean): TextInput[] {
  const texts = positionals.map((t, i) => validateText(t, { what: `argument ${i + 1}` }));
  if (!pair) return texts;
  if (texts.length % 2 !== 0) {
    throw usageError(`--pair takes texts two by two (A B A B …); got ${texts.length} arguments`);
  }
  const out: TextInput[] = [];
  for (let i = 0; i < texts.length; i += 2) out.push([texts[i]!, texts[i + 1]!]);
  return out;
}

/** Stdin lines; with `--pair`, each line holds two texts separated by a tab. */
async function fromStdin(pair: boolean): Promise<TextInput[]> {
  if (process.stdin.isTTY === true)
    throw usageError("give the texts as arguments, --file FILE.tsv, or one per line on stdin");
  const lines = stdinLines(decodeUtf8Strict(new Uint8Array(await Bun.stdin.arrayBuffer()), "stdin"));
  if (lines.length === 0) throw usageError("no texts: stdin was empty and no TEXT arguments were given");
  return lines.map((line, i) => {
    if (!pair) return validateText(line, { what: `stdin line ${i + 1}` });
    const cells = line.split("\t");
    if (cells.length !== 2) {
      throw new QuantdError(
        "DATA_MALFORMED",
        `stdin line ${i + 1}: --pair needs two texts separated by one tab`,
        {
          details: { line: i + 1 },
        },
      );
    }
    return [
      validateText(cells[0], { what: `stdin line ${i + 1} (first text)` }),
      validateText(cells[1], { what: `stdin line ${i + 1} (second text)` }),
    ] as const;
  });
}

/** One human line (or several, for entities) per result. */
function renderResult(r: TaskResult, input: TextInput): string[] {
  switch (r.task) {
    case "classification":
    case "pair-classification":
      return [`${r.label}  ${r.score.toFixed(4)}  ${shown(input)}`];
    case "multi-label":
      return [
        `${r.active.join(",") || "-"}  ${r.labels.map((l) => `${l.label}=${l.score.toFixed(3)}`).join(" ")}  ${shown(input)}`,
      ];
    case "regression":
      return [`${r.values.map((v) => v.toFixed(4)).join(" ")}  ${shown(input)}`];
    case "embedding": {
      const norm = Math.hypot(...r.embedding);
      const head = r.embedding.slice(0, SHOWN_COMPONENTS).map((v) => v.toFixed(4));
      return [`dim ${r.embedding.length}  norm ${norm.toFixed(4)}  [${head.join(", ")}, …]  ${shown(input)}`];
    }
    case "token-classification":
      return [
        shown(input),
        ...r.entities.map((e) => `  ${e.entity}  ${e.score.toFixed(4)}  [${e.start}, ${e.end})  ${e.word}`),
      ];
  }
}

/** The `infer` command. */
export const inferCommand: Command = {
  name: "infer",
  summary: "run a model of any task (classification, pairs, multi-label, regression, tokens, embeddings)",
  usage:
    "[--model FILE] [--task TASK] [--pair] [--file FILE.tsv] [--aggregation S] [--pooling M] [--normalize on|off] " +
    "[--threshold P] [--tokenizer DIR] [--threads N] [--batch N] [--json] [TEXT…]",
  description:
    "Runs the model on each TEXT argument, each line of stdin, or each row of --file, and prints what its task " +
    "gives. The task is derived from the model's outputs (logits [batch, labels] or [batch, sequence, labels], " +
    "last_hidden_state, sentence_embedding), its config.json (problem_type, id2label, architectures) and a " +
    "sentence-transformers layout beside it (modules.json, 1_Pooling, 2_Normalize); --task sets it, and a task " +
    "the outputs contradict is an error.\n\n" +
    "A pair classifier takes two texts per input: --pair with arguments A B A B …, or stdin lines A<TAB>B, or a " +
    "TSV whose header names two text columns (sentence1/sentence2, question/sentence, premise/hypothesis, …). " +
    "One text where a pair is expected, or a pair for a token or embedding model, is DATA_MISMATCH.\n\n" +
    "Token classification prints entities with [start, end) character offsets, grouped by --aggregation as " +
    "transformers' pipeline does (none, simple, first, average, max). Multi-label prints the labels whose " +
    "sigmoid reaches --threshold; regression the raw value; embeddings the pooled (normalized) vector's size, " +
    "norm and first components (--json: the whole vector).\n\n" +
    "With --json, prints one object {model, task, results: [{input, …}]}.",
  flags: [
    {
      name: "model",
      short: "m",
      type: "string",
      value: "FILE",
      description: "ONNX model (a file, or a directory with model.onnx)",
      default: "the shipped calib/models/sst2-bert-mini/model.onnx",
    },
    ...TASK_FLAGS,
    {
      name: "pair",
      type: "boolean",
      description: "inputs are pairs: arguments two by two, stdin lines A<TAB>B",
    },
    {
      name: "file",
      type: "string",
      value: "FILE.tsv",
      description: "read inputs from a TSV with one or two text columns",
    },
    {
      name: "aggregation",
      type: "string",
      value: "S",
      description: `token classification: how tokens become entities (${AGGREGATIONS.join(", ")})`,
      default: "simple",
    },
    ...INFERENCE_FLAGS,
    JSON_FLAG,
  ],
  async run(ctx) {
    const json = flagBool(ctx.flags, "json");
    const pair = flagBool(ctx.flags, "pair");
    const batchSize = batchFlag(ctx.flags);
    const aggregation: Aggregation = flagChoice(ctx.flags, "aggregation", AGGREGATIONS, "simple");
    const modelPath = flagString(ctx.flags, "model", SHIPPED_MODEL)!;
    const file = flagString(ctx.flags, "file");
    if (file !== undefined && ctx.positionals.length > 0)
      throw usageError("give texts as arguments or --file, not both");
    const inputs =
      file !== undefined
        ? (await readInputsTsv(file)).map((r) => r.input)
        : ctx.positionals.length > 0
          ? fromArguments(ctx.positionals, pair)
          : await fromStdin(pair);

    const model = await openTaskModel(modelPath, ctx.flags);
    try {
      if (pair && inputsOf(model.task.kind) === "text") {
        throw new QuantdError(
          "DATA_MISMATCH",
          `--pair given, but ${model.modelPath} is ${taskModelNoun(model.task.kind)} (${model.task.source}): each input is one text` +
            pairOnTextHint(model.task.kind),
        );
      }
      const results = await model.infer(inputs, { batchSize, aggregation });
      if (json) {
        ctx.out(
          JSON.stringify({
            model: model.modelPath,
            task: model.task,
            results: results.map((r, i) => ({ input: inputs[i], ...publicResult(r) })),
          }),
        );
      } else
        for (const [i, r] of results.entries()) for (const line of renderResult(r, inputs[i]!)) ctx.out(line);
      return 0;
    } finally {
      await model.release();
    }
  },
};
