/**
 * What `quantd bench` says of each model's task: the task detected from the
 * model and its files, and, with `--data` when the models are not sentence
 * classifiers, the task's own agreement with the first model (tokens, label
 * decisions, samples at cosine ≥ 0.98 with the mean cosine, regression values
 * with Pearson): the metric the quantize gate judges, on the data's texts or
 * pairs. A sentence classifier keeps the table's accuracy and top-1 agreement.
 */
import { tokenizerDirFor } from "../bench/data.ts";
import type { BenchModel, BenchRow } from "../bench/measure.ts";
import { QuantdError } from "../errors.ts";
import { explainRefusedModel } from "../onnx/file-scan.ts";
import { clopperPearsonLower, DEFAULT_CONFIDENCE } from "../quant/confidence.ts";
import { describeAgreement, type GateMetrics } from "../quant/gate.ts";
import { compareTaskOutputs, taskFigureParts } from "../quant/task-metrics.ts";
import { type InputRow, readInputsTsv } from "../runtime/input-tsv.ts";
import type { TaskSpec } from "../runtime/task.ts";
import { loadTaskModel, type TaskModel, type TaskOutputs } from "../runtime/task-model.ts";

/** One model's task, as the bench document records it. */
export interface BenchTask {
  model: string;
  /** The detected task, when the model and its files could be read. */
  task?: TaskSpec["kind"];
  /** Labels of its head (0 for embeddings). */
  labels?: number;
  /** Why the task could not be told (the model's rows say why it could not run), or the model not run on the data. */
  error?: string;
  /** With `--data`: the task's agreement with the first model of the same task, as the gate counts it. */
  versusFirst?: {
    baseline: string;
    unit: string;
    n: number;
    agreement: number;
    agreementLower: number;
    confidence: number;
    figures: Record<string, number>;
    /** `token agreement 99.8 % (≥ 99.6 % at 95 %, n = 4,310); every token agrees on 97.0 % of 400 samples`. */
    line: string;
  };
}

/** One model as read: its task entry, its spec, and its outputs on the data when they were asked for. */
interface ReadTask {
  task: BenchTask;
  spec?: TaskSpec;
  outputs?: TaskOutputs;
}

/**
 * Each model's task and, for a model other than a sentence classifier when
 * `rowsOf` is given, its outputs on the data (one session per model, released
 * before the next opens). A model that cannot be read, or run on the data,
 * says why in its entry.
 */
async function readTasks(
  models: readonly BenchModel[],
  tokenizerDir: string | undefined,
  rowsOf: (() => Promise<readonly InputRow[]>) | undefined,
): Promise<ReadTask[]> {
  const out: ReadTask[] = [];
  const why = (err: unknown, code: "MODEL_LOAD_FAILED" | "DATA_MISMATCH"): string => {
    const e = QuantdError.from(err, code);
    return `${e.code}: ${e.message}`;
  };
  for (const m of models) {
    const dir = tokenizerDirFor(m.path, tokenizerDir);
    let model: TaskModel;
    try {
      model = await loadTaskModel(m.path, {
        session: { intraOpThreads: 1 },
        ...(dir !== undefined ? { tokenizerDir: dir } : {}),
      });
    } catch (err) {
      const refused = await explainRefusedModel(m.path, QuantdError.from(err, "MODEL_LOAD_FAILED"));
      out.push({ task: { model: m.label, error: why(refused, "MODEL_LOAD_FAILED") } });
      continue;
    }
    const spec = model.task;
    const read: ReadTask = { task: { model: m.label, task: spec.kind, labels: spec.labels.length }, spec };
    try {
      if (rowsOf !== undefined && spec.kind !== "classification") {
        read.outputs = await model.outputs((await rowsOf()).map((r) => r.input));
      }
    } catch (err) {
      read.task.error = why(err, "DATA_MISMATCH");
    } finally {
      await model.release();
    }
    out.push(read);
  }
  return out;
}

/**
 * The task of every model, and with `dataPath` (texts, or pairs in two text
 * columns) the task's agreement of each model other than a sentence
 * classifier with the first model of the same task (see the module comment).
 * The file is read only when such a model needs it.
 *
 * @throws nothing for a model or a file that cannot be read: the entries say why
 */
export async function benchTasks(
  models: readonly BenchModel[],
  tokenizerDir: string | undefined,
  dataPath?: string,
): Promise<BenchTask[]> {
  let rows: Promise<readonly InputRow[]> | undefined;
  const rowsOf = dataPath === undefined ? undefined : () => (rows ??= readInputsTsv(dataPath));
  const read = await readTasks(models, tokenizerDir, rowsOf);
  for (const r of read) {
    const first = read.find((b) => b.spec?.kind === r.spec?.kind && b.outputs !== undefined);
    if (r.spec === undefined || r.outputs === undefined || first === undefined || first === r) continue;
    r.task.versusFirst = versus(first.task.model, compareTaskOutputs(r.spec, first.outputs!, r.outputs));
  }
  return read.map((r) => r.task);
}

/** A task's agreement with a reference model, as bench and eval record and print it. */
export type TaskAgreement = NonNullable<BenchTask["versusFirst"]>;

/** A comparison with a reference model (bench: the first model; eval: --compare) as it is recorded and printed. */
export function versus(baseline: string, m: GateMetrics): TaskAgreement {
  const unit = m.task?.unit ?? "sample";
  return {
    baseline,
    unit,
    n: m.n,
    agreement: m.agreement,
    agreementLower: m.agreementLower,
    confidence: m.confidence,
    figures: m.task?.figures ?? {},
    line: [
      `${unit} agreement ${describeAgreement(m)}`,
      ...(m.task === undefined ? [] : taskFigureParts(m.task)),
    ].join("; "),
  };
}

/**
 * Sentence classifiers' top-1 agreement with the first model (the table's column) as the gate reads it,
 * with its lower bound and n, in the entries of the models that have it: the column alone cannot tell
 * 99.5 % on 200 sentences from 99.5 % on 2,000.
 */
export function addClassifierAgreements(tasks: BenchTask[], rows: readonly BenchRow[]): void {
  const baseline = tasks[0]?.model;
  for (const t of tasks) {
    if (t.task !== "classification" || t.versusFirst !== undefined || baseline === undefined) continue;
    const quality = rows
      .map((r) => (r.model === t.model && r.status === "ok" ? r.quality : undefined))
      .find((q) => q !== undefined && "agreement" in q && q.agreement !== undefined);
    if (quality === undefined || "error" in quality || quality.agreement === undefined) continue;
    const n = quality.samples;
    const m = countedAgreement(Math.round(quality.agreement * n), n);
    t.versusFirst = {
      baseline,
      unit: "sample",
      n,
      agreement: m.agreement,
      agreementLower: m.agreementLower,
      confidence: m.confidence,
      figures: {},
      line: `sample agreement ${describeAgreement(m)}`,
    };
  }
}

/**
 * Top-1 agreement on `k` of `n` samples as the gate reads it, with its one-sided lower bound at the
 * default confidence, for {@link describeAgreement}.
 */
export function countedAgreement(
  k: number,
  n: number,
): Pick<GateMetrics, "n" | "agreement" | "agreementLower" | "confidence" | "gateN" | "gateAgreements"> {
  return {
    n,
    agreement: n === 0 ? 0 : k / n,
    agreementLower: clopperPearsonLower(k, n, DEFAULT_CONFIDENCE),
    confidence: DEFAULT_CONFIDENCE,
    gateN: n,
    gateAgreements: k,
  };
}

/** Whether `--data` keeps the table's accuracy and top-1 agreement: every model that could be read classifies sentences. */
export function classifiersOnly(tasks: readonly BenchTask[]): boolean {
  return tasks.every((t) => t.task === undefined || t.task === "classification");
}

/** One line per model: `task int8: token-classification (3 labels); vs fp32: token agreement …`. */
export function renderBenchTasks(tasks: readonly BenchTask[]): string[] {
  return tasks.map((t) => {
    if (t.task === undefined) return `task ${t.model}: unknown (${t.error ?? "not read"})`;
    const labels = t.task === "embedding" ? "" : ` (${t.labels} labels)`;
    const vs = t.versusFirst === undefined ? "" : `; vs ${t.versusFirst.baseline}: ${t.versusFirst.line}`;
    const error = t.error === undefined ? "" : `; on the data: error ${t.error}`;
    return `task ${t.model}: ${t.task}${labels}${vs}${error}`;
  });
}
