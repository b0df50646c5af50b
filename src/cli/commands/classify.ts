/**
 * `quantd classify`: label and score for each text, from the arguments or, when
 * there are none, one text per line of stdin. Every text is validated before
 * the model loads, so a bad line fails fast and names its position.
 */

import { QuantdError } from "../../errors.ts";
import type { Classification, Classifier } from "../../runtime/classifier.ts";
import { taskModelNoun } from "../../runtime/task.ts";
import { decodeUtf8Strict, validateText } from "../../runtime/text.ts";
import type { Command, ParsedFlags } from "../command.ts";
import {
  batchFlag,
  classifierOfTaskModel,
  INFERENCE_FLAGS,
  JSON_FLAG,
  openTaskModel,
} from "../model-flags.ts";
import { flagBool, flagString, usageError } from "../parse.ts";
import { SHIPPED_MODEL } from "../paths.ts";

/** Longest text echoed in human output; `--json` always carries the whole text. */
const SHOWN_TEXT_CHARS = 100;

/** Splits stdin into lines (LF or CRLF); a final newline does not start another line. */
export function stdinLines(text: string): string[] {
  const lines = text.split(/\r?\n/);
  if (lines.at(-1) === "") lines.pop();
  return lines;
}

async function readTexts(positionals: readonly string[]): Promise<string[]> {
  if (positionals.length > 0) {
    return positionals.map((t, i) => validateText(t, { what: `text ${i + 1}` }));
  }
  if (process.stdin.isTTY === true) {
    throw usageError("give the texts as arguments, or one per line on stdin");
  }
  const bytes = new Uint8Array(await Bun.stdin.arrayBuffer());
  const lines = stdinLines(decodeUtf8Strict(bytes, "stdin"));
  if (lines.length === 0) throw usageError("no texts: stdin was empty and no TEXT arguments were given");
  return lines.map((t, i) => validateText(t, { what: `stdin line ${i + 1}` }));
}

function shown(text: string): string {
  return text.length <= SHOWN_TEXT_CHARS ? text : `${text.slice(0, SHOWN_TEXT_CHARS - 1)}…`;
}

/**
 * Opens the model, refusing it before classifying when its task is not single-text classification: a
 * softmax label of a multi-label, regression or pair model (one text where it takes two) would be served
 * as an answer. The task is read from the same session the classifier then runs on.
 *
 * @throws MODEL_TASK_MISMATCH naming the model's task and where it was read
 */
async function openSingleTextClassifier(modelPath: string, flags: ParsedFlags): Promise<Classifier> {
  const model = await openTaskModel(modelPath, flags);
  const { kind, source } = model.task;
  if (kind === "classification") return classifierOfTaskModel(modelPath, model, flags);
  await model.release();
  throw new QuantdError(
    "MODEL_TASK_MISMATCH",
    `${model.modelPath} is ${taskModelNoun(kind)} (${source}), and classify gives one softmax label per text: ` +
      `run it with quantd infer${kind === "pair-classification" ? " --pair" : ""}`,
    { details: { task: kind, expected: "classification" } },
  );
}

/** The `classify` command. */
export const classifyCommand: Command = {
  name: "classify",
  summary: "label and score for each text (arguments, or one per line on stdin)",
  usage: "[--model FILE] [--tokenizer DIR] [--threads N] [--batch N] [--json] [TEXT…]",
  description:
    "Classifies each TEXT argument or, without arguments, each line of stdin, and prints one line per " +
    "text: label, score (the softmax probability of that label) and the text. The model defaults to the " +
    "fp32 SST-2 BERT-Mini shipped with quantd; its tokenizer and label names are read from the model's " +
    "directory. It runs single-text classifiers; a model of another task (pairs, multi-label, regression, " +
    "tokens, embeddings) is MODEL_TASK_MISMATCH: quantd infer runs those.\n\n" +
    "With --json, prints one object {model, labels, results: [{text, label, labelId, score, " +
    "probabilities}]}. An empty, oversized (over 64 KiB) or non-UTF-8 text is an error naming its position. " +
    "Put -- before texts that start with a dash.",
  flags: [
    {
      name: "model",
      short: "m",
      type: "string",
      value: "FILE",
      description: "ONNX text classifier (a file, or a directory with model.onnx)",
      default: "the shipped calib/models/sst2-bert-mini/model.onnx",
    },
    ...INFERENCE_FLAGS,
    JSON_FLAG,
  ],
  async run(ctx) {
    const json = flagBool(ctx.flags, "json");
    const batchSize = batchFlag(ctx.flags);
    const modelPath = flagString(ctx.flags, "model", SHIPPED_MODEL)!;
    const texts = await readTexts(ctx.positionals);

    const classifier = await openSingleTextClassifier(modelPath, ctx.flags);
    try {
      const width = Math.max(...classifier.labels.map((l) => l.length));
      const results: Classification[] = [];
      for (let start = 0; start < texts.length; start += batchSize) {
        const chunk = texts.slice(start, start + batchSize);
        const out = await classifier.classify(chunk, { batchSize });
        if (json) results.push(...out);
        else {
          out.forEach((r, i) => {
            ctx.out(`${r.label.padEnd(width)}  ${r.score.toFixed(4)}  ${shown(chunk[i]!)}`);
          });
        }
      }
      if (json) {
        ctx.out(
          JSON.stringify({
            model: classifier.modelPath,
            labels: classifier.labels,
            results: results.map((r, i) => ({
              text: texts[i],
              label: r.label,
              labelId: r.labelId,
              score: r.score,
              probabilities: r.probabilities,
            })),
          }),
        );
      }
      return 0;
    } finally {
      await classifier.release();
    }
  },
};
