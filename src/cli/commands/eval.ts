/**
 * `quantd eval`: accuracy of a model on a labelled TSV and, with `--compare`,
 * how closely it tracks another model (top-1 agreement, logit differences): the
 * check an engineer runs on an int8 model against its fp32 parent.
 */
import { relative, resolve } from "node:path";
import { isQuantdError } from "../../errors.ts";
import { describeAgreement, formatCount } from "../../quant/gate.ts";
import { samplesOfInputRows } from "../../quant/samples.ts";
import { compareTaskOutputs } from "../../quant/task-metrics.ts";
import { checkSampleInputs } from "../../quant/task-validate.ts";
import type { Classifier } from "../../runtime/classifier.ts";
import { AGGREGATIONS } from "../../runtime/entities.ts";
import { type EvalLatency, type EvalResult, evaluate } from "../../runtime/evaluate.ts";
import { isPairFile, readInputsTsv } from "../../runtime/input-tsv.ts";
import { findModelFiles } from "../../runtime/model-files.ts";
import { evaluateTask, scoreTaskResults, type TaskEvalReport } from "../../runtime/task-eval.ts";
import type { TaskModel } from "../../runtime/task-model.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import { countedAgreement, type TaskAgreement, versus } from "../bench-tasks.ts";
import type { Command, ParsedFlags } from "../command.ts";
import {
  batchFlag,
  classifierOfTaskModel,
  INFERENCE_FLAGS,
  JSON_FLAG,
  openClassifier,
  openTaskModel,
  TASK_FLAGS,
} from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagChoice, flagInt, flagRequired, flagString } from "../parse.ts";
import { createProgress, formatMs, formatPercent, renderTable } from "../render.ts";

/** What `quantd eval --json` prints: the figures of {@link EvalResult} without per-sample arrays. */
export interface EvalReport {
  model: string;
  data: string;
  compare?: string;
  n: number;
  labelled: number;
  accuracy?: number;
  compareAccuracy?: number;
  agreement?: number;
  /** One-sided Clopper–Pearson lower bound of {@link agreement} at {@link confidence}, as the gate reads it. */
  agreementLower?: number;
  confidence?: number;
  disagreements?: number;
  maxAbsLogitDiff?: number;
  meanAbsLogitDiff?: number;
  latency: EvalLatency;
  compareLatency?: EvalLatency;
}

/** Builds the JSON report from an evaluation. */
export function toEvalReport(
  r: EvalResult,
  files: { model: string; data: string; compare?: string },
): EvalReport {
  const report: EvalReport = { ...files, n: r.n, labelled: r.labelled, latency: r.latency };
  if (r.accuracy !== undefined) report.accuracy = r.accuracy;
  if (r.compareAccuracy !== undefined) report.compareAccuracy = r.compareAccuracy;
  if (r.agreement !== undefined) {
    report.agreement = r.agreement;
    // The same bound the quantize gate decides on, so a held-out check reads as the gate's does.
    const { agreementLower, confidence } = countedAgreement(r.n - (r.disagreements ?? 0), r.n);
    report.agreementLower = agreementLower;
    report.confidence = confidence;
  }
  if (r.disagreements !== undefined) report.disagreements = r.disagreements;
  if (r.maxAbsLogitDiff !== undefined) report.maxAbsLogitDiff = r.maxAbsLogitDiff;
  if (r.meanAbsLogitDiff !== undefined) report.meanAbsLogitDiff = r.meanAbsLogitDiff;
  if (r.compareLatency !== undefined) report.compareLatency = r.compareLatency;
  return report;
}

/**
 * A comparison's top-1 agreement as the gate prints it, `99.6 % (≥ 99.0 % at
 * 95 %, n = 872)`, of an {@link EvalReport} or an evaluation's own result;
 * `undefined` without a comparison.
 */
export function describeEvalAgreement(
  r: Pick<EvalReport, "n" | "agreement" | "disagreements">,
): string | undefined {
  return r.agreement === undefined
    ? undefined
    : describeAgreement(countedAgreement(r.n - (r.disagreements ?? 0), r.n));
}

function shortPath(p: string): string {
  const rel = relative(process.cwd(), p);
  return rel !== "" && !rel.startsWith("..") ? rel : p;
}

function latencyText(l: EvalLatency, batch: number): string {
  return (
    `${formatMs(l.meanMsPerSample)}/text mean; batch of ${batch}: ` +
    `p50 ${formatMs(l.p50MsPerBatch)}, p90 ${formatMs(l.p90MsPerBatch)}`
  );
}

/** Human lines for an evaluation: an aligned name/value table. */
export function renderEvalReport(r: EvalReport, batch: number): string[] {
  const rows: string[][] = [
    ["model", shortPath(r.model)],
    ["data", `${shortPath(r.data)} (${r.n} texts, ${r.labelled} labelled)`],
  ];
  if (r.accuracy !== undefined) rows.push(["accuracy", formatPercent(r.accuracy)]);
  rows.push(["latency", latencyText(r.latency, batch)]);
  if (r.compare !== undefined) {
    rows.push(["compare", shortPath(r.compare)]);
    if (r.compareAccuracy !== undefined) rows.push(["  accuracy", formatPercent(r.compareAccuracy)]);
    if (r.compareLatency !== undefined) rows.push(["  latency", latencyText(r.compareLatency, batch)]);
    const bound = describeEvalAgreement(r);
    if (bound !== undefined) {
      const differ = r.disagreements ?? 0;
      rows.push(["agreement", `${bound} top-1, ${formatCount(differ)} of ${formatCount(r.n)} differ`]);
    }
    if (r.maxAbsLogitDiff !== undefined) rows.push(["max |Δlogit|", r.maxAbsLogitDiff.toPrecision(4)]);
    if (r.meanAbsLogitDiff !== undefined) rows.push(["mean |Δlogit|", r.meanAbsLogitDiff.toPrecision(4)]);
  }
  return renderTable(rows);
}

/**
 * Opens the `--compare` model. Its tokenizer is `--tokenizer`, else the one
 * beside it, else the evaluated model's (a quantized model written alone into
 * a folder keeps its parent's tokenizer).
 */
async function openCompare(path: string, ctxFlags: ParsedFlags, main: Classifier): Promise<Classifier> {
  if (flagString(ctxFlags, "tokenizer") === undefined) {
    try {
      findModelFiles(path);
    } catch (err) {
      if (!isQuantdError(err, "TOKENIZER_NOT_FOUND")) throw err;
      return openClassifier(path, { ...ctxFlags, tokenizer: main.tokenizer.dir });
    }
  }
  return openClassifier(path, ctxFlags);
}

/** Human lines for a task evaluation (every task but single-text classification). */
function renderTaskEvalReport(
  r: TaskEvalReport & { versus?: TaskAgreement },
  model: string,
  data: string,
): string[] {
  const rows: string[][] = [
    ["model", `${shortPath(model)} (${r.task})`],
    ["data", `${shortPath(data)} (${r.n} rows${r.labelled === undefined ? "" : `, ${r.labelled} labelled`})`],
  ];
  const pct = (x: number | undefined) => (x === undefined ? undefined : formatPercent(x));
  const add = (name: string, v: string | undefined) => {
    if (v !== undefined) rows.push([name, v]);
  };
  add(
    "accuracy",
    r.skipped !== undefined ? "skipped: no labelled rows (--compare needs none)" : pct(r.accuracy),
  );
  add("macro F1", pct(r.macroF1));
  add("micro F1", pct(r.microF1));
  add("exact match", pct(r.exactMatch));
  add("Spearman", r.spearman?.toFixed(4));
  add("Pearson", r.pearson?.toFixed(4));
  add("mean |error|", r.meanAbsError?.toPrecision(4));
  if (r.entityF1 !== undefined) {
    add(
      "entity F1",
      `${pct(r.entityF1)} (precision ${pct(r.entityPrecision)}, recall ${pct(r.entityRecall)})`,
    );
    for (const [type, t] of Object.entries(r.perType ?? {})) {
      add(
        `  ${type}`,
        `F1 ${pct(t.f1)}, precision ${pct(t.precision)}, recall ${pct(t.recall)}, ${t.support} gold`,
      );
    }
  }
  add(`recall@${r.k}`, pct(r.recallAtK));
  add("mean cosine", r.meanCosine?.toFixed(4));
  if (r.versus !== undefined) {
    rows.push(["compare", shortPath(r.versus.baseline)]);
    add("agreement", r.versus.line);
  }
  return renderTable(rows);
}

/** `eval` of a model whose task is not single-text classification: its own measures (`task-eval.ts`). */
async function runTaskEval(
  model: TaskModel,
  dataPath: string,
  comparePath: string | undefined,
  flags: ParsedFlags,
): Promise<{ report: TaskEvalReport & { versus?: TaskAgreement }; lines: string[] }> {
  const rows = await readInputsTsv(dataPath);
  let compare: TaskModel | undefined;
  try {
    if (comparePath !== undefined) {
      compare = await openTaskModel(
        comparePath,
        flagString(flags, "tokenizer") === undefined ? { ...flags, tokenizer: model.tokenizer.dir } : flags,
      );
    }
    const batchSize = batchFlag(flags);
    const aggregation = flagChoice(flags, "aggregation", AGGREGATIONS, "simple");
    let report: TaskEvalReport & { versus?: TaskAgreement };
    // Embeddings are compared by recall@k and cosine; the other tasks also by their agreement, as the gate
    // counts it, from the raw outputs of the same run whose results are scored.
    if (compare !== undefined && model.task.kind !== "embedding") {
      const inputs = rows.map((r) => r.input);
      const candidate = await model.inferWithOutputs(inputs, { batchSize, aggregation });
      const reference = await compare.outputs(inputs, { batchSize });
      report = {
        ...scoreTaskResults(model.task, rows, candidate.results, true),
        versus: versus(compare.modelPath, compareTaskOutputs(model.task, reference, candidate.outputs)),
      };
    } else {
      report = await evaluateTask(model, rows, {
        batchSize,
        aggregation,
        k: flagInt(flags, "k", { min: 1, max: 1000 }, 10),
        ...(compare !== undefined ? { compare } : {}),
      });
    }
    return { report, lines: renderTaskEvalReport(report, model.modelPath, resolve(dataPath)) };
  } finally {
    await compare?.release();
  }
}

/** The `eval` command. */
/**
 * A pair file (two text columns) given to a single-text classifier is
 * DATA_MISMATCH naming the model's task and the file's first pair, as
 * `quantize` says it — not a header the sample reader cannot place.
 *
 * @throws DATA_MISMATCH when `dataPath`'s header names a pair
 */
async function refusePairFile(taskModel: TaskModel, dataPath: string): Promise<void> {
  if (!(await isPairFile(dataPath))) return;
  const samples = samplesOfInputRows(await readInputsTsv(dataPath), dataPath);
  checkSampleInputs(taskModel.task, samples, taskModel.modelPath);
}

export const evalCommand: Command = {
  name: "eval",
  summary: "accuracy on a labelled TSV; agreement with another model (--compare)",
  usage: "--model FILE --data FILE.tsv [--compare FILE] [--tokenizer DIR] [--batch N] [--threads N] [--json]",
  description:
    "Runs the model over every text of a TSV file with a header naming a text column (sentence, text " +
    "or content) and a label column (a class id, or a label name from the model's config.json), as " +
    "GLUE ships SST-2, and prints the top-1 accuracy on the labelled rows and the inference latency.\n\n" +
    "With --compare, runs a second model on the same batches and adds its accuracy, the top-1 agreement " +
    "between the two with its 95 % lower bound as the quantize gate reads it, and the largest and mean " +
    "|logit difference|; rows of a sentence classifier may then be unlabelled. This is " +
    "how an int8 model is checked against its fp32 parent.\n\n" +
    "A model of another task is scored by that task's measures (accuracy and macro F1 for pairs, F1 and " +
    "exact match for multi-label, Spearman and Pearson for regression, entity F1 for tokens), on labelled " +
    "rows; with --compare rows may be unlabelled (with none, accuracy is skipped and says so) and it adds the task's agreement with the other model as the quantize gate counts it " +
    "(samples, label decisions or tokens, with the bound), and an embedding model is scored only against " +
    "--compare (recall@k of its neighbours, mean cosine).\n\n" +
    "Latency counts inference only (not tokenization), per batch of --batch texts. Progress goes to " +
    "stderr when it is a terminal. With --json, prints one object with n, labelled, accuracy, latency " +
    "and, with --compare, agreement, agreementLower, confidence, disagreements, maxAbsLogitDiff, " +
    "meanAbsLogitDiff, compareAccuracy.",
  flags: [
    {
      name: "model",
      short: "m",
      type: "string",
      value: "FILE",
      description: "ONNX text classifier to evaluate (a file, or a directory with model.onnx)",
    },
    {
      name: "data",
      short: "d",
      type: "string",
      value: "FILE.tsv",
      description: "labelled texts: a TSV with a header (label<TAB>sentence)",
    },
    {
      name: "compare",
      type: "string",
      value: "FILE",
      description: "a second model to compare with (e.g. the fp32 parent of an int8 model)",
    },
    ...INFERENCE_FLAGS,
    ...TASK_FLAGS,
    {
      name: "aggregation",
      type: "string",
      value: "S",
      description: `token classification: how tokens become entities (${AGGREGATIONS.join(", ")})`,
      default: "simple",
    },
    {
      name: "k",
      type: "string",
      value: "K",
      description: "embeddings: neighbours of recall@k",
      default: "10",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    expectNoPositionals(ctx.positionals);
    const modelPath = flagRequired(ctx.flags, "model");
    const dataPath = flagRequired(ctx.flags, "data");
    const comparePath = flagString(ctx.flags, "compare");
    const json = flagBool(ctx.flags, "json");
    const batchSize = batchFlag(ctx.flags);

    // Other tasks have their own measures; a single-text classifier keeps the classifier's evaluation.
    const taskModel = await openTaskModel(modelPath, ctx.flags);
    if (taskModel.task.kind !== "classification") {
      try {
        const { report, lines } = await runTaskEval(taskModel, dataPath, comparePath, ctx.flags);
        if (json) ctx.out(JSON.stringify({ model: taskModel.modelPath, data: resolve(dataPath), ...report }));
        else for (const line of lines) ctx.out(line);
        return 0;
      } finally {
        await taskModel.release();
      }
    }

    // The same session, as a classifier: the model is loaded once.
    const model = await classifierOfTaskModel(modelPath, taskModel, ctx.flags);
    let compare: Classifier | undefined;
    try {
      await refusePairFile(taskModel, dataPath);
      const samples = await readSamplesTsv(dataPath, {
        requireLabels: comparePath === undefined,
        labels: model.labels,
      });
      if (comparePath !== undefined) compare = await openCompare(comparePath, ctx.flags, model);
      const progress = createProgress("eval");
      let result: EvalResult;
      try {
        result = await evaluate(model, samples, {
          batchSize,
          onProgress: (done, total) => progress.update(done, total),
          ...(compare === undefined ? {} : { compare }),
        });
      } finally {
        progress.done();
      }
      const files =
        compare === undefined
          ? { model: model.modelPath, data: resolve(dataPath) }
          : { model: model.modelPath, data: resolve(dataPath), compare: compare.modelPath };
      const report = toEvalReport(result, files);
      if (json) ctx.out(JSON.stringify(report));
      else for (const line of renderEvalReport(report, batchSize)) ctx.out(line);
      return 0;
    } finally {
      await compare?.release();
      await model.release();
    }
  },
};
