/**
 * What `quantd bench` says of each model's task: the task detected from the
 * model and its files, and, with `--data` when the models are not sentence
 * classifiers, the task's own agreement with the first model (tokens, label
 * decisions, samples at cosine ≥ 0.98 with the mean cosine, regression values
 * with Pearson): the metric the quantize gate judges, on the data's texts or
 * pairs. A sentence classifier keeps the table's accuracy and top-1 agreement.
 */
import { tokenizerDirFor } from "../bench/data.ts";
import type { BenchModel } from "../bench/measure.ts";
import { QuantdError } from "../errors.ts";
import { describeAgreement } from "../quant/gate.ts";
import { compareTaskOutputs, taskFigureParts } from "../quant/task-metrics.ts";
import type { InputRow } from "../runtime/input-tsv.ts";
import type { TaskSpec } from "../runtime/task.ts";
import { loadTaskModel, type TaskOutputs } from "../runtime/task-model.ts";

/** One model's task, as the bench document records it. */
export interface BenchTask {
  model: string;
  /** The detected task, when the model and its files could be read. */
  task?: TaskSpec["kind"];
  /** Labels of its head (0 for embeddings). */
  labels?: number;
  /** Why the task could not be told (the model's rows say why it could not run). */
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

/**
 * Each model's task and, with `rows`, its outputs on them (one session per
 * model, released before the next opens).
 */
async function readTasks(
  models: readonly BenchModel[],
  tokenizerDir: string | undefined,
  rows: readonly InputRow[] | undefined,
): Promise<{ task: BenchTask; spec?: TaskSpec; outputs?: TaskOutputs }[]> {
  const out: { task: BenchTask; spec?: TaskSpec; outputs?: TaskOutputs }[] = [];
  for (const m of models) {
    const dir = tokenizerDirFor(m.path, tokenizerDir);
    try {
      const model = await loadTaskModel(m.path, {
        session: { intraOpThreads: 1 },
        ...(dir !== undefined ? { tokenizerDir: dir } : {}),
      });
      try {
        const spec = model.task;
        const task: BenchTask = { model: m.label, task: spec.kind, labels: spec.labels.length };
        const outputs = rows === undefined ? undefined : await model.outputs(rows.map((r) => r.input));
        out.push({ task, spec, ...(outputs !== undefined ? { outputs } : {}) });
      } finally {
        await model.release();
      }
    } catch (err) {
      const e = QuantdError.from(err, "MODEL_LOAD_FAILED");
      out.push({ task: { model: m.label, error: `${e.code}: ${e.message}` } });
    }
  }
  return out;
}

/**
 * The task of every model, and with `rows` the task's agreement of each with
 * the first model of the same task (see the module comment).
 *
 * @throws nothing for a model that cannot be read: its entry says why
 */
export async function benchTasks(
  models: readonly BenchModel[],
  tokenizerDir: string | undefined,
  rows?: readonly InputRow[],
): Promise<BenchTask[]> {
  const read = await readTasks(models, tokenizerDir, rows);
  for (const r of read) {
    const first = read.find((b) => b.spec?.kind === r.spec?.kind && b.outputs !== undefined);
    if (r.spec === undefined || r.outputs === undefined || first === undefined || first === r) continue;
    const m = compareTaskOutputs(r.spec, first.outputs!, r.outputs);
    const unit = m.task?.unit ?? "sample";
    r.task.versusFirst = {
      baseline: first.task.model,
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
  return read.map((r) => r.task);
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
    return `task ${t.model}: ${t.task}${labels}${vs}`;
  });
}
