/**
 * The seam between the fleet link and what answers its commands: the link
 * decodes, validates and deduplicates commands; a {@link FleetCommandHandler}
 * answers the ones that are not jobs. Job commands queue a job in the store's
 * job table, run one at a time by the job engine (`jobs/engine.ts`), so a
 * repeated command id never starts a second job and a job interrupted by a
 * crash runs again after restart. An agent registers its own engine handlers
 * for them; a link given no engine runs the handler's job methods in one of
 * its own (see `jobs.ts`).
 */
import type {
  BenchParams,
  CollectParams,
  ModelInfo,
  QuantizeDynamicParams,
  RecalibrateParams,
  RollbackParams,
  SetConfigParams,
} from "../protocol.ts";

/** What a running job may do besides returning its result. */
export interface FleetJobContext {
  /** The job id (the command id that queued it). */
  readonly jobId: string;
  /** Aborted when the link stops; a job should stop at its next check. */
  readonly signal: AbortSignal;
  /** Records a stage (persisted and published on `jobs/{id}`). `fraction` is 0…1. */
  progress(stage: string, fraction?: number): void;
}

/**
 * The device's side of each command. The optional job methods run a link's
 * jobs when the link is given no job engine: each resolves with the job's
 * result (benchmark and accuracy figures, the new model version…), which
 * becomes the `report`, or throws a QuantdError to fail (`GATE_NOT_MET` marks
 * the job REJECTED, `JOB_TIMED_OUT` TIMED_OUT, anything else FAILED).
 */
export interface FleetCommandHandler {
  recalibrate?(params: RecalibrateParams, ctx: FleetJobContext): Promise<unknown>;
  quantizeDynamic?(params: QuantizeDynamicParams, ctx: FleetJobContext): Promise<unknown>;
  bench?(params: BenchParams, ctx: FleetJobContext): Promise<unknown>;
  rollback?(params: RollbackParams, ctx: FleetJobContext): Promise<unknown>;
  /** Live facts for the `status` reply (serving model, queue depth…). */
  status(): Promise<Record<string, unknown>>;
  /** Applies allow-listed settings; resolves with the values now in effect. */
  setConfig(params: SetConfigParams): Promise<Record<string, unknown>>;
  /** Starts or stops live sample capture; resolves with the capture state. */
  collect(params: CollectParams): Promise<unknown>;
}

/** What the link says about the agent in its retained `online` status. */
export interface AgentIdentity {
  agentVersion: string;
  /** The model being served, or null before one is loaded. */
  model: ModelInfo | null;
}
