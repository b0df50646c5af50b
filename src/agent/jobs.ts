/**
 * Job runner for the agent's unattended jobs: one job at a time, the rest queued, cancellable, timed out,
 * every stage persisted so a crash resumes or fails cleanly. (Owned by the recalibration-job helper.)
 *
 * @module
 */
export {};
