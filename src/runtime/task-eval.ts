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
import type { TaskModel, TaskResult } from "./task-model.ts";

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

function macroOf(counts: readonly { tp: number; fp: number; fn: number }[]): number {
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

/**
 * Evaluates `model` on labelled rows (see the module comment for each task's columns).
 *
 * @throws DATA_MALFORMED for a row without the label its task needs; USAGE for embeddings without `compare`
 */
export async function evaluateTask(
  model: TaskModel,
  rows: readonly InputRow[],
  opts: TaskEvalOptions = {},
): Promise<TaskEvalReport> {
  const task = model.task;
  const inputs = rows.map((r) => r.input);
  const infer = { batchSize: opts.batchSize ?? 32, aggregation: opts.aggregation ?? "simple" };
  const report: TaskEvalReport = { task: task.kind, n: rows.length };
  if (task.kind === "embedding") {
    if (opts.compare === undefined) {
      throw new QuantdError(
        "USAGE",
        "an embedding model has no labels to score: give --compare REFERENCE for recall@k against its neighbours",
      );
    }
    const k = opts.k ?? 10;
    const mine = (await model.outputs(inputs, infer)).data;
    const ref = (await opts.compare.outputs(inputs, infer)).data;
    report.k = k;
    report.recallAtK = neighbourOverlap(ref, mine, k);
    report.meanCosine = mine.reduce((s, v, i) => s + cosine(v, ref[i]!), 0) / Math.max(1, mine.length);
    return report;
  }
  for (const row of rows) {
    if (task.kind === "token-classification" ? row.entities === undefined : row.label === undefined) {
      throw bad(
        row,
        task.kind === "token-classification" ? "no entities column (TYPE@start:end …)" : "no label",
      );
    }
  }
  const results: TaskResult[] = await model.infer(inputs, infer);
  switch (task.kind) {
    case "classification":
    case "pair-classification": {
      const counts = task.labels.map(() => ({ tp: 0, fp: 0, fn: 0 }));
      let correct = 0;
      for (const [i, row] of rows.entries()) {
        const gold = labelId(row, requireLabel(row), task.labels);
        const r = results[i]!;
        const pred = "labelId" in r ? r.labelId : -1;
        if (pred === gold) {
          correct++;
          counts[gold]!.tp++;
        } else {
          counts[gold]!.fn++;
          if (pred >= 0) counts[pred]!.fp++;
        }
      }
      report.accuracy = correct / rows.length;
      report.macroF1 = macroOf(counts);
      return report;
    }
    case "multi-label": {
      const counts = task.labels.map(() => ({ tp: 0, fp: 0, fn: 0 }));
      let exact = 0;
      for (const [i, row] of rows.entries()) {
        const cell = requireLabel(row).trim();
        const gold = new Set(
          cell === "" ? [] : cell.split(",").map((c) => labelId(row, c.trim(), task.labels)),
        );
        const r = results[i]!;
        const pred = new Set(r.task === "multi-label" ? r.labels.flatMap((l, k) => (l.on ? [k] : [])) : []);
        let same = gold.size === pred.size;
        for (let k = 0; k < task.labels.length; k++) {
          if (gold.has(k) && pred.has(k)) counts[k]!.tp++;
          else if (gold.has(k)) {
            counts[k]!.fn++;
            same = false;
          } else if (pred.has(k)) {
            counts[k]!.fp++;
            same = false;
          }
        }
        if (same) exact++;
      }
      const total = counts.reduce((a, c) => ({ tp: a.tp + c.tp, fp: a.fp + c.fp, fn: a.fn + c.fn }), {
        tp: 0,
        fp: 0,
        fn: 0,
      });
      report.microF1 = f1(total.tp, total.fp, total.fn).f1;
      report.macroF1 = macroOf(counts);
      report.exactMatch = exact / rows.length;
      return report;
    }
    case "regression": {
      const gold = rows.map((row) => {
        const v = Number(requireLabel(row));
        if (!Number.isFinite(v)) throw bad(row, `label ${JSON.stringify(row.label)} is not a number`);
        return v;
      });
      const pred = results.map((r) => (r.task === "regression" ? r.value : Number.NaN));
      report.spearman = spearman(gold, pred);
      report.pearson = pearson(gold, pred);
      report.meanAbsError = gold.reduce((s, g, i) => s + Math.abs(g - pred[i]!), 0) / gold.length;
      return report;
    }
    case "token-classification": {
      const byType = new Map<string, { tp: number; fp: number; fn: number }>();
      const count = (key: string, field: "tp" | "fp" | "fn") => {
        const type = key.slice(0, key.lastIndexOf("@"));
        const c = byType.get(type) ?? { tp: 0, fp: 0, fn: 0 };
        c[field]++;
        byType.set(type, c);
      };
      for (const [i, row] of rows.entries()) {
        const gold = goldEntities(row);
        const r = results[i]!;
        const pred = new Set(
          r.task === "token-classification" ? r.entities.map((e) => `${e.entity}@${e.start}:${e.end}`) : [],
        );
        for (const p of pred) count(p, gold.has(p) ? "tp" : "fp");
        for (const g of gold) if (!pred.has(g)) count(g, "fn");
      }
      const total = [...byType.values()].reduce(
        (a, c) => ({ tp: a.tp + c.tp, fp: a.fp + c.fp, fn: a.fn + c.fn }),
        {
          tp: 0,
          fp: 0,
          fn: 0,
        },
      );
      const t = f1(total.tp, total.fp, total.fn);
      report.entityPrecision = t.precision;
      report.entityRecall = t.recall;
      report.entityF1 = t.f1;
      report.perType = Object.fromEntries(
        [...byType.entries()]
          .sort()
          .map(([type, c]) => [type, { ...f1(c.tp, c.fp, c.fn), support: c.tp + c.fn }]),
      );
      return report;
    }
  }
}
