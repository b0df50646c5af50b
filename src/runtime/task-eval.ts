/**
 * Evaluation of a model of any task on a labelled TSV (see `input-tsv.ts`),
 * with the measure users of each task report:
 * - classification and pairs: accuracy and macro F1 (a `label` column of ids or names);
 * - multi-label: micro and macro F1 and exact-match accuracy (`label`: names or ids joined by `,`);
 * - regression: Spearman (and Pearson) correlation and mean absolute error (`label`: a number);
 * - token classification: entity precision, recall and F1 as seqeval counts them — an entity
 *   is right only when its type and both ends match (`entities`: `TYPE@start:end` separated by spaces);
 * - embeddings: no labels; recall@k of each text's nearest neighbours against a reference
 *   model's (`--compare`, usually the fp32 parent), and the mean cosine between the two.
 */
import { QuantdError } from "../errors.ts";
import type { Aggregation } from "./entities.ts";
import type { InputRow } from "./input-tsv.ts";
import { cosine } from "./pooling.ts";
import { neighbourOverlap, pearson, spearman } from "./stats.ts";
import type { TaskSpec } from "./task.ts";
import type { InferOptions, TaskModel, TaskResult } from "./task-model.ts";

/** Figures of one evaluation; which are set depends on the task. */
export interface TaskEvalReport {
  task: string;
  n: number;
  accuracy?: number;
  macroF1?: number;
  microF1?: number;
  exactMatch?: number;
  spearman?: number;
  pearson?: number;
  meanAbsError?: number;
  entityPrecision?: number;
  entityRecall?: number;
  entityF1?: number;
  /** Per entity type: precision, recall, F1 and gold count. */
  perType?: Record<string, { precision: number; recall: number; f1: number; support: number }>;
  recallAtK?: number;
  k?: number;
  meanCosine?: number;
  /** Rows the task's measures were computed on, when `compare` let some go unlabelled. */
  labelled?: number;
  /** Why the task's own measures were not computed (`compare` on rows with no labels). */
  skipped?: string;
}

/** Options of {@link evaluateTask}. */
export interface TaskEvalOptions {
  batchSize?: number;
  aggregation?: Aggregation;
  /** A reference model (embeddings: required, for recall@k). */
  compare?: TaskModel;
  /** Neighbours of recall@k. @defaultValue 10 */
  k?: number;
}

function bad(row: InputRow, what: string): QuantdError {
  return new QuantdError("DATA_MALFORMED", `line ${row.line}: ${what}`, { details: { line: row.line } });
}

/** A label column cell as an id of `labels` (an id or a name). */
function labelId(row: InputRow, cell: string, labels: readonly string[]): number {
  const byName = labels.indexOf(cell);
  if (byName >= 0) return byName;
  if (/^\d+$/.test(cell) && Number(cell) < labels.length) return Number(cell);
  throw bad(
    row,
    `label ${JSON.stringify(cell)} is neither a label of the model (${labels.join(", ")}) nor an id below ${labels.length}`,
  );
}

function f1(tp: number, fp: number, fn: number): { precision: number; recall: number; f1: number } {
  const precision = tp + fp === 0 ? 0 : tp / (tp + fp);
  const recall = tp + fn === 0 ? 0 : tp / (tp + fn);
  return {
    precision,
    recall,
    f1: precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall),
  };
}

function requireLabel(row: InputRow): string {
  if (row.label === undefined) throw bad(row, "no label");
  return row.label;
}

/** True positives, false positives and false negatives of one label or entity type. */
interface Counts {
  tp: number;
  fp: number;
  fn: number;
}

/** The sums of `counts`, as `f1` takes them. */
function totalOf(counts: readonly Counts[]): [number, number, number] {
  const t = counts.reduce((a, c) => ({ tp: a.tp + c.tp, fp: a.fp + c.fp, fn: a.fn + c.fn }), {
    tp: 0,
    fp: 0,
    fn: 0,
  });
  return [t.tp, t.fp, t.fn];
}

function macroOf(counts: readonly Counts[]): number {
  return counts.reduce((s, c) => s + f1(c.tp, c.fp, c.fn).f1, 0) / Math.max(1, counts.length);
}

/** `TYPE@start:end TYPE@start:end …` into entity keys. */
function goldEntities(row: InputRow): Set<string> {
  const cell = row.entities ?? "";
  const out = new Set<string>();
  for (const item of cell.split(/\s+/).filter((x) => x !== "")) {
    const m = /^(.+)@(\d+):(\d+)$/.exec(item);
    if (m === null || Number(m[3]) <= Number(m[2])) {
      throw bad(row, `entity ${JSON.stringify(item)} is not TYPE@start:end (start < end)`);
    }
    out.add(`${m[1]}@${m[2]}:${m[3]}`);
  }
  return out;
}

/** What a scorer of one task reads: its task, the labelled rows and the model's result for each. */
interface Scored<K extends TaskSpec["kind"]> {
  task: TaskSpec & { kind: K };
  rows: readonly InputRow[];
  results: readonly TaskResult[];
}

/** Accuracy and macro F1 of single labels (classification, pairs). */
function scoreLabels(s: Scored<"classification" | "pair-classification">): Partial<TaskEvalReport> {
  const counts = s.task.labels.map(() => ({ tp: 0, fp: 0, fn: 0 }));
  let correct = 0;
  for (const [i, row] of s.rows.entries()) {
    const gold = labelId(row, requireLabel(row), s.task.labels);
    const r = s.results[i]!;
    const pred = "labelId" in r ? r.labelId : -1;
    if (pred === gold) {
      correct++;
      counts[gold]!.tp++;
    } else {
      counts[gold]!.fn++;
      if (pred >= 0) counts[pred]!.fp++;
    }
  }
  return { accuracy: correct / s.rows.length, macroF1: macroOf(counts) };
}

/** Micro and macro F1 and exact match of label sets. */
function scoreMultiLabel(s: Scored<"multi-label">): Partial<TaskEvalReport> {
  const counts = s.task.labels.map(() => ({ tp: 0, fp: 0, fn: 0 }));
  let exact = 0;
  for (const [i, row] of s.rows.entries()) {
    const cell = requireLabel(row).trim();
    const gold = new Set(
      cell === "" ? [] : cell.split(",").map((c) => labelId(row, c.trim(), s.task.labels)),
    );
    const r = s.results[i]!;
    const pred = new Set(r.task === "multi-label" ? r.labels.flatMap((l, k) => (l.on ? [k] : [])) : []);
    let same = true;
    for (let k = 0; k < s.task.labels.length; k++) {
      const field = gold.has(k) ? (pred.has(k) ? "tp" : "fn") : pred.has(k) ? "fp" : undefined;
      if (field !== undefined) counts[k]![field]++;
      if (field === "fn" || field === "fp") same = false;
    }
    if (same) exact++;
  }
  return {
    microF1: f1(...totalOf(counts)).f1,
    macroF1: macroOf(counts),
    exactMatch: exact / s.rows.length,
  };
}

/** Spearman, Pearson and mean absolute error of values. */
function scoreRegression(s: Scored<"regression">): Partial<TaskEvalReport> {
  const gold = s.rows.map((row) => {
    const v = Number(requireLabel(row));
    if (!Number.isFinite(v)) throw bad(row, `label ${JSON.stringify(row.label)} is not a number`);
    return v;
  });
  const pred = s.results.map((r) => (r.task === "regression" ? r.value : Number.NaN));
  return {
    spearman: spearman(gold, pred),
    pearson: pearson(gold, pred),
    meanAbsError: gold.reduce((sum, g, i) => sum + Math.abs(g - pred[i]!), 0) / gold.length,
  };
}

/** Entity precision, recall and F1 as seqeval counts them, overall and per type. */
function scoreEntities(s: Scored<"token-classification">): Partial<TaskEvalReport> {
  const byType = new Map<string, Counts>();
  const count = (key: string, field: keyof Counts) => {
    const type = key.slice(0, key.lastIndexOf("@"));
    const c = byType.get(type) ?? { tp: 0, fp: 0, fn: 0 };
    c[field]++;
    byType.set(type, c);
  };
  for (const [i, row] of s.rows.entries()) {
    const gold = goldEntities(row);
    const r = s.results[i]!;
    const pred = new Set(
      r.task === "token-classification" ? r.entities.map((e) => `${e.entity}@${e.start}:${e.end}`) : [],
    );
    for (const p of pred) count(p, gold.has(p) ? "tp" : "fp");
    for (const g of gold) if (!pred.has(g)) count(g, "fn");
  }
  const t = f1(...totalOf([...byType.values()]));
  return {
    entityPrecision: t.precision,
    entityRecall: t.recall,
    entityF1: t.f1,
    perType: Object.fromEntries(
      [...byType.entries()]
        .sort()
        .map(([type, c]) => [type, { ...f1(c.tp, c.fp, c.fn), support: c.tp + c.fn }]),
    ),
  };
}

/**
 * Recall@k of each text's nearest neighbours against the reference model's, and the mean cosine between the two.
 *
 * @throws USAGE without a reference model
 */
async function scoreEmbeddings(
  model: TaskModel,
  rows: readonly InputRow[],
  infer: InferOptions,
  opts: TaskEvalOptions,
): Promise<Partial<TaskEvalReport>> {
  if (opts.compare === undefined) {
    throw new QuantdError(
      "USAGE",
      "an embedding model has no labels to score: give --compare REFERENCE for recall@k against its neighbours",
    );
  }
  const k = opts.k ?? 10;
  const inputs = rows.map((r) => r.input);
  const mine = (await model.outputs(inputs, infer)).data;
  const ref = (await opts.compare.outputs(inputs, infer)).data;
  return {
    k,
    recallAtK: neighbourOverlap(ref, mine, k),
    meanCosine: mine.reduce((s, v, i) => s + cosine(v, ref[i]!), 0) / Math.max(1, mine.length),
  };
}

/** Whether a row has the gold column its task is scored on. */
function hasGold(kind: TaskSpec["kind"], row: InputRow): boolean {
  return kind === "token-classification" ? row.entities !== undefined : row.label !== undefined;
}

/** Every row has the gold column its task is scored on. @throws DATA_MALFORMED naming the first that lacks it */
function checkGold(kind: TaskSpec["kind"], rows: readonly InputRow[]): void {
  const row = rows.find((r) => !hasGold(kind, r));
  if (row === undefined) return;
  throw bad(row, kind === "token-classification" ? "no entities column (TYPE@start:end …)" : "no label");
}

/**
 * The rows the task's measures are computed on: every row, which must all be
 * labelled; with a model to compare with (which needs no labels), the labelled
 * ones, as single-text classification does.
 */
function goldRows(
  kind: TaskSpec["kind"],
  rows: readonly InputRow[],
  comparing: boolean,
): readonly InputRow[] {
  if (!comparing) {
    checkGold(kind, rows);
    return rows;
  }
  return rows.filter((r) => hasGold(kind, r));
}

/** The scorer of each labelled task. */
function scoreOf(
  task: TaskSpec,
  rows: readonly InputRow[],
  results: readonly TaskResult[],
): Partial<TaskEvalReport> {
  switch (task.kind) {
    case "classification":
    case "pair-classification":
      return scoreLabels({ task: { ...task, kind: task.kind }, rows, results });
    case "multi-label":
      return scoreMultiLabel({ task: { ...task, kind: task.kind }, rows, results });
    case "regression":
      return scoreRegression({ task: { ...task, kind: task.kind }, rows, results });
    case "token-classification":
      return scoreEntities({ task: { ...task, kind: task.kind }, rows, results });
    case "embedding":
      throw new QuantdError("INTERNAL", "embeddings are scored against a reference model");
  }
}

/**
 * Evaluates `model` on labelled rows (see the module comment for each task's columns).
 *
 * With `compare`, rows may be unlabelled (the comparison needs no labels): the
 * task's measures are computed on the labelled ones, or skipped (`skipped`
 * says so) when there are none.
 *
 * @throws DATA_MALFORMED for a row without the label its task needs (without `compare`); USAGE for embeddings without `compare`
 */
export async function evaluateTask(
  model: TaskModel,
  rows: readonly InputRow[],
  opts: TaskEvalOptions = {},
): Promise<TaskEvalReport> {
  const task = model.task;
  const infer = { batchSize: opts.batchSize ?? 32, aggregation: opts.aggregation ?? "simple" };
  const report: TaskEvalReport = { task: task.kind, n: rows.length };
  if (task.kind === "embedding") return { ...report, ...(await scoreEmbeddings(model, rows, infer, opts)) };
  const gold = goldRows(task.kind, rows, opts.compare !== undefined);
  const results =
    gold.length === 0
      ? []
      : await model.infer(
          gold.map((r) => r.input),
          infer,
        );
  return scoreGold(task, rows.length, gold, results);
}

/**
 * {@link evaluateTask} of results already inferred, one per row (as `TaskModel.infer` gives them),
 * for a caller that ran the model once for its results and its raw outputs. `comparing`: rows may be
 * unlabelled, as with {@link TaskEvalOptions.compare}. Not for embeddings, which have no labels.
 *
 * @throws DATA_MALFORMED for a row without the label its task needs (without `comparing`)
 */
export function scoreTaskResults(
  task: TaskSpec,
  rows: readonly InputRow[],
  results: readonly TaskResult[],
  comparing: boolean,
): TaskEvalReport {
  const resultOf = new Map(rows.map((r, i) => [r, results[i]!]));
  const gold = goldRows(task.kind, rows, comparing);
  return scoreGold(
    task,
    rows.length,
    gold,
    gold.map((r) => resultOf.get(r)!),
  );
}

/** The report of `n` rows scored on their labelled ones, `gold`, and the model's results for those. */
function scoreGold(
  task: TaskSpec,
  n: number,
  gold: readonly InputRow[],
  results: readonly TaskResult[],
): TaskEvalReport {
  const report: TaskEvalReport = { task: task.kind, n };
  if (gold.length < n) report.labelled = gold.length;
  if (gold.length === 0)
    return { ...report, skipped: "no labelled rows: accuracy skipped, only the comparison" };
  return { ...report, ...scoreOf(task, gold, results) };
}
