/**
 * Where the samples come from and how they split: a TSV file or a pool (the
 * agent's store) becomes disjoint calibration and held-out validation sets,
 * sized by {@link planSplit}. The first stage of `runQuantization`.
 */
import { existsSync } from "node:fs";
import { isQuantdError, QuantdError } from "../errors.ts";
import { type InputRow, isPairFile, readInputsTsv } from "../runtime/input-tsv.ts";
import { readSamplesTsv } from "../runtime/tsv.ts";
import { DEFAULT_CALIBRATION_SAMPLES, planSplit, type SplitRequest } from "./split.ts";

/** One text to calibrate or validate on. */
export interface QuantSample {
  text: string;
  /** The second text of a pair (a pair classifier's samples). */
  pair?: string;
  /** Class id, when known. */
  label?: number;
  /** Where it came from, for messages (`calib.tsv:12`, `store#42`). */
  origin: string;
  /** The pool's id of the sample, when it came from one (keys the fp32 logits cache). */
  id?: number;
}

/** A sample as a pool hands it out (the store's rows fit this shape). */
export interface PoolSample {
  text: string;
  /** The second text of a pair. */
  pair?: string | null;
  label?: number | null;
  id?: number;
}

/**
 * A source of samples that can hand out disjoint calibration and validation
 * sets: the agent's SQLite `SampleStore` satisfies it.
 */
export interface SamplePool {
  /** Shown in messages and the report (e.g. the database path). */
  readonly name: string;
  /** Samples held. */
  count(): number;
  /** Two disjoint picks. @throws CALIB_EMPTY when the pool holds fewer than `nCalib + nVal` */
  pickDisjoint(
    nCalib: number,
    nVal: number,
    seed: number,
  ): { calibration: readonly PoolSample[]; validation: readonly PoolSample[] };
}

/** Samples split into disjoint sets. */
export interface SampleSplit {
  calibration: QuantSample[];
  validation: QuantSample[];
  /** Samples the source held (before the split). */
  available: number;
  /** How the split departed from what was asked, if it did. */
  warnings: string[];
  /** The split in one line: sizes, and why (see {@link planSplit}). */
  line: string;
}

/**
 * Indices of `n` samples spread evenly over the samples' lengths (characters of
 * both texts), in file order. The first rows of a file are often not like the
 * rest (shorter, one topic, sorted by something): calibration on them leaves
 * the longer inputs outside the ranges it measured, as the store's
 * length-stratified pick does not.
 */
function spreadByLength(samples: readonly QuantSample[], n: number): number[] {
  const size = (x: QuantSample): number => x.text.length + (x.pair?.length ?? 0);
  const byLength = samples.map((_, i) => i).sort((a, b) => size(samples[a]!) - size(samples[b]!) || a - b);
  const picked = new Set<number>();
  for (let k = 0; k < n; k++) picked.add(byLength[Math.floor(((k + 0.5) * samples.length) / n)]!);
  return [...picked].sort((a, b) => a - b);
}

/**
 * Splits samples into disjoint calibration and validation sets
 * ({@link planSplit} sizes both): calibration rows spread over the file's
 * lengths ({@link spreadByLength}), validation the rows left, in file order. A
 * gate checked on calibration samples would prove nothing, so at least one row
 * is always held out.
 *
 * @throws CALIB_EMPTY when there are no samples, or only one and no separate validation set
 */
export function splitSamples(
  samples: readonly QuantSample[],
  req: SplitRequest,
  separateValidation: boolean,
  source: string,
): SampleSplit {
  const available = samples.length;
  if (available === 0) {
    throw new QuantdError("CALIB_EMPTY", `${source} holds no samples`, { details: { path: source } });
  }
  if (separateValidation) {
    const n = Math.min(samples.length, req.calibration ?? DEFAULT_CALIBRATION_SAMPLES);
    const calibration = spreadByLength(samples, n).map((i) => samples[i]!);
    return {
      calibration,
      validation: [],
      available,
      warnings: [],
      line: `${available.toLocaleString("en-US")} rows: ${calibration.length} calibrate`,
    };
  }
  if (available < 2) {
    throw new QuantdError(
      "CALIB_EMPTY",
      `${source} holds 1 sample; quantd needs at least 2 (one to calibrate, one held out to validate)`,
      { details: { path: source, available } },
    );
  }
  const plan = planSplit(available, req);
  const warnings: string[] = [];
  if (req.validation !== undefined && plan.validation < req.validation) {
    warnings.push(`only ${plan.validation} held-out samples to validate on (asked for ${req.validation})`);
  }
  const calibrate = new Set(spreadByLength(samples, plan.calibration));
  return {
    calibration: samples.filter((_, i) => calibrate.has(i)),
    validation: samples.filter((_, i) => !calibrate.has(i)).slice(0, plan.validation),
    available,
    warnings,
    line: plan.line,
  };
}

/**
 * Disjoint sets from a pool, sized by {@link planSplit} (validation defaults to
 * every sample left after calibration).
 *
 * @throws CALIB_EMPTY when the pool holds fewer than 2 samples
 */
export function splitPool(pool: SamplePool, req: SplitRequest, seed: number): SampleSplit {
  const available = pool.count();
  if (available < 2) {
    throw new QuantdError(
      "CALIB_EMPTY",
      `${pool.name} holds ${available} sample(s); quantd needs at least 2`,
      {
        details: { path: pool.name, available },
      },
    );
  }
  const plan = planSplit(available, req, "samples");
  const warnings: string[] = [];
  if (req.validation !== undefined && plan.validation < req.validation) {
    warnings.push(
      `${pool.name} holds ${available} samples: calibrating on ${plan.calibration}, validating on ${plan.validation}`,
    );
  }
  const pick = pool.pickDisjoint(plan.calibration, plan.validation, seed);
  const conv = (s: PoolSample, i: number): QuantSample => ({
    text: s.text,
    ...(typeof s.pair === "string" ? { pair: s.pair } : {}),
    origin: `${pool.name}#${s.id ?? i}`,
    ...(typeof s.label === "number" ? { label: s.label } : {}),
    ...(s.id !== undefined ? { id: s.id } : {}),
  });
  return {
    calibration: pick.calibration.map(conv),
    validation: pick.validation.map(conv),
    available,
    warnings,
    line: plan.line,
  };
}

/** An input file's rows as samples, each known by its file and line; a label is kept when it is a class id. */
export function samplesOfInputRows(rows: readonly InputRow[], path: string): QuantSample[] {
  return rows.map((r) => ({
    text: typeof r.input === "string" ? r.input : r.input[0],
    ...(typeof r.input === "string" ? {} : { pair: r.input[1] }),
    origin: `${path}:${r.line}`,
    ...(r.label !== undefined && /^\d+$/.test(r.label) ? { label: Number(r.label) } : {}),
  }));
}

/**
 * Reads every sample of a TSV file.
 *
 * @throws FILE_NOT_FOUND when it does not exist
 * @throws CALIB_EMPTY when it holds no samples (empty, or a header only)
 * @throws DATA_MALFORMED, TEXT_* for a bad row (with file:line)
 */
export async function readSampleTsv(path: string): Promise<QuantSample[]> {
  if (!existsSync(path)) {
    throw new QuantdError("FILE_NOT_FOUND", `samples file ${path} does not exist`, { details: { path } });
  }
  try {
    if (await isPairFile(path)) return samplesOfInputRows(await readInputsTsv(path), path);
    const rows = await readSamplesTsv(path);
    return rows.map((r) => ({
      text: r.text,
      origin: `${path}:${r.line}`,
      ...(r.label !== undefined ? { label: r.label } : {}),
    }));
  } catch (err) {
    if (isQuantdError(err, "DATA_EMPTY")) {
      throw new QuantdError("CALIB_EMPTY", `no samples to calibrate on: ${err.message}`, {
        cause: err,
        details: { path },
      });
    }
    throw err;
  }
}

/** Where a run's samples come from (the fields of `RunQuantizationOptions` that say so). */
export interface SampleSource {
  /** A TSV path or a pool. */
  calib: string | SamplePool;
  /** A separate TSV of held-out samples; then all of `calib` may calibrate. */
  validate?: string;
  /** At most this many held-out samples from `validate`. */
  validationSamples?: number;
  /** Seed of a pool's pick. @defaultValue 1 */
  seed?: number;
}

/**
 * The samples of a run, split as `req` asks: from a TSV or a pool, with the
 * held-out set from a separate TSV when one is given.
 *
 * @throws FILE_NOT_FOUND, CALIB_EMPTY, DATA_MALFORMED as {@link readSampleTsv} and {@link splitPool}
 */
export async function loadSplit(src: SampleSource, req: SplitRequest): Promise<SampleSplit> {
  const separate = src.validate !== undefined;
  let split: SampleSplit;
  if (typeof src.calib === "string") {
    split = splitSamples(await readSampleTsv(src.calib), req, separate, src.calib);
  } else if (separate) {
    // Every pool sample but one may calibrate: the held-out set comes from the separate file.
    const calibration = Math.min(req.calibration ?? DEFAULT_CALIBRATION_SAMPLES, src.calib.count() - 1);
    split = {
      ...splitPool(src.calib, { ...req, calibration, validation: 1 }, src.seed ?? 1),
      validation: [],
    };
  } else {
    split = splitPool(src.calib, req, src.seed ?? 1);
  }
  if (src.validate !== undefined) {
    split.validation = (await readSampleTsv(src.validate)).slice(0, src.validationSamples);
    split.line = `${split.calibration.length} calibrate, ${split.validation.length} validate from ${src.validate} (${req.gateWords} needs ≥ ${req.needed.toLocaleString("en-US")})`;
  }
  return split;
}
