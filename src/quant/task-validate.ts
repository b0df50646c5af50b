/**
 * Validation of int8 candidates of models other than single-text classifiers
 * (pairs, token classification, multi-label, regression, embeddings): the
 * task's outputs of fp32 are computed once, every candidate's on the same
 * held-out samples, and `task-metrics.ts` turns the two into the figures the
 * gate judges. It has the shape of the classifier's validator (`validate.ts`)
 * so the pipeline and its fallback treat every task alike; unlike it, it runs
 * the whole set for every candidate (no early stop: a token set's trials are
 * not the samples the looks are planned on) and keeps no fp32 cache across runs.
 */
import { encodeModel } from "../onnx/codec.ts";
import type { ModelProto, ValueInfoProto } from "../onnx/types.ts";
import { DataType } from "../onnx/types.ts";
import type { ModelFiles } from "../runtime/model-files.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import { detectTask, type TaskOverride, type TaskSpec } from "../runtime/task.ts";
import { TaskModel, type TaskOutputs } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { TensorInfo } from "../runtime/types.ts";
import { DEFAULT_CONFIDENCE } from "./confidence.ts";
import type { QuantSample } from "./samples.ts";
import { compareTaskOutputs, type TaskThresholds } from "./task-metrics.ts";
import {
  type CandidateValidation,
  VALIDATION_BATCH,
  type ValidationSummary,
  type Validator,
  type ValidatorOptions,
} from "./validate.ts";

/**
 * The graph's outputs as a session would describe them. An output without a
 * declared shape (some converters drop it) is taken as `[batch, labels]`: the
 * classifier's validator checks the real shape on the first batch.
 */
function outputInfo(v: ValueInfoProto): TensorInfo {
  const t = v.type?.tensorType;
  const declared = t?.shape?.dim;
  const dims =
    declared === undefined ? ["batch", "labels"] : declared.map((d) => d.dimValue ?? d.dimParam ?? "?");
  return { name: v.name, type: t?.elemType === DataType.FLOAT ? "float32" : "other", dims };
}

/**
 * The task of an fp32 model about to be quantized, from its graph outputs and files.
 *
 * @throws as {@link detectTask}
 */
export function taskOfModel(model: ModelProto, files: ModelFiles, override: TaskOverride = {}): TaskSpec {
  const taskFiles = {
    model: files.model,
    tokenizerDir: files.tokenizerDir,
    ...(files.configPath === undefined ? {} : { configPath: files.configPath }),
  };
  return detectTask(model.graph.output.map(outputInfo), taskFiles, override);
}

/** A sample as the task takes it: a text, or a pair when the sample has a second text. */
export function sampleInput(s: QuantSample): TextInput {
  return s.pair === undefined ? s.text : [s.text, s.pair];
}

/** Options of {@link createTaskValidator}. */
export interface TaskValidatorOptions extends ValidatorOptions {
  task: TaskSpec;
  thresholds?: Partial<TaskThresholds>;
}

/**
 * A validator of `opts.task` over `opts.samples`.
 *
 * @throws DATA_MISMATCH (when validating) for samples the task cannot take, e.g. single texts for a pair classifier
 */
export function createTaskValidator(opts: TaskValidatorOptions): Validator {
  const n = opts.samples.length;
  const confidence = opts.gate.confidence ?? DEFAULT_CONFIDENCE;
  const batchSize = opts.batchSize ?? VALIDATION_BATCH;
  const inputs = opts.samples.map(sampleInput);
  const encoded = inputs.map((x) =>
    typeof x === "string"
      ? opts.tokenizer.encode(x, undefined, { maxLength: opts.maxLength })
      : opts.tokenizer.encode(x[0], x[1], { maxLength: opts.maxLength }),
  );
  const labels = opts.samples.map((s) => s.label);
  const stats: ValidationSummary = {
    samples: n,
    batchSize,
    looks: [n],
    lookLevels: { interim: confidence, final: confidence },
    reference: { fromCache: 0, computed: 0, ms: 0 },
    candidateSamples: 0,
    candidateMs: 0,
    earlyStops: { passed: 0, failed: 0 },
  };
  let reference: TaskOutputs | undefined;

  const outputsOf = async (
    model: string | Uint8Array,
    what: string,
    perSample: boolean,
  ): Promise<TaskOutputs> => {
    const session = await createOrtSession(model, opts.session);
    try {
      const runner = new TaskModel(what, session, opts.tokenizer, opts.task);
      return await runner.outputs(inputs, {
        maxLength: opts.maxLength,
        batchSize: perSample ? 1 : batchSize,
      });
    } finally {
      await session.release();
    }
  };

  const validate = async (model: ModelProto, perSample: boolean): Promise<CandidateValidation> => {
    if (reference === undefined) {
      const t0 = performance.now();
      reference = await outputsOf(opts.fp32.path, opts.fp32.path, false);
      stats.reference.computed = n;
      stats.reference.ms = performance.now() - t0;
    }
    const t0 = performance.now();
    const candidate = await outputsOf(encodeModel(model), "the int8 candidate", perSample);
    const metrics = compareTaskOutputs(opts.task, reference, candidate, {
      confidence,
      labels,
      ...(opts.thresholds !== undefined ? { thresholds: opts.thresholds } : {}),
    });
    metrics.planned = n;
    const ms = performance.now() - t0;
    stats.candidateSamples += n;
    stats.candidateMs += ms;
    return { metrics, samples: n, ms };
  };

  return {
    looks: [n],
    validate,
    summary: () => structuredClone(stats),
    truncated: encoded.filter((e) => e.truncated).length,
    lengths: encoded.map((e) => e.inputIds.length),
  };
}
