/**
 * A loaded model version and the batches using it: a swap retires the old one,
 * whose session is released only when the last batch using it ends, so no
 * request fails because of a swap. It also keeps the recent batch latencies
 * and failures the post-swap checks judge.
 */

import type { TaskModel } from "../runtime/task-model.ts";
import type { ModelVersion } from "../store/models.ts";

/** A loaded version and the batches using it. */
export class Loaded {
  refs = 0;
  retired = false;
  #released: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;
  /** Recent batch latencies (ms), newest last, at most `window` long. */
  readonly latencies: number[] = [];
  batches = 0;
  failed = 0;

  constructor(
    readonly version: ModelVersion,
    readonly model: TaskModel,
    readonly window: number,
    /** The tokenizer and config.json it was loaded with (its copy in the state directory). */
    readonly tokenizerDir: string,
  ) {}

  record(ms: number, ok: boolean): void {
    this.batches++;
    if (!ok) this.failed++;
    else {
      this.latencies.push(ms);
      if (this.latencies.length > this.window) this.latencies.shift();
    }
  }

  /** Releases the session once no batch uses it. */
  retire(): Promise<void> {
    this.retired = true;
    this.#released ??= new Promise<void>((resolve) => {
      this.#onIdle = resolve;
      if (this.refs === 0) resolve();
    }).then(() => this.model.release());
    return this.#released;
  }

  unref(): void {
    this.refs--;
    if (this.refs === 0 && this.retired) this.#onIdle?.();
  }
}
