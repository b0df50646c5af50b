/**
 * The worker side of {@link ./threaded-session.ts}: one onnxruntime session,
 * opened on the first message, running each `run` message in turn and
 * answering with its outputs or its error in QuantdError's wire form.
 */
import { QuantdError } from "../errors.ts";
import { createOrtSession } from "./ort-session.ts";
import type { FromSessionThread, ToSessionThread } from "./threaded-session.ts";
import type { InferenceSession } from "./types.ts";

declare const self: Worker;

let session: InferenceSession | undefined;

function send(m: FromSessionThread): void {
  self.postMessage(m);
}

async function handle(m: ToSessionThread): Promise<void> {
  switch (m.type) {
    case "open":
      try {
        session = await createOrtSession(m.model, m.options);
        send({
          type: "opened",
          inputNames: [...session.inputNames],
          outputNames: [...session.outputNames],
          inputs: [...session.inputs],
          outputs: [...session.outputs],
        });
      } catch (err) {
        send({ type: "open-failed", error: QuantdError.from(err, "MODEL_LOAD_FAILED").toJSON() });
      }
      return;
    case "run":
      try {
        if (session === undefined) throw new QuantdError("INFERENCE_FAILED", "no session is open");
        const outputs = await session.run(m.feeds, m.fetches);
        send({ type: "result", id: m.id, outputs });
      } catch (err) {
        send({ type: "failed", id: m.id, error: QuantdError.from(err, "INFERENCE_FAILED").toJSON() });
      }
      return;
    case "release":
      await session?.release();
      session = undefined;
      send({ type: "released" });
      return;
  }
}

// One message at a time, in order: a release waits for the runs posted before it.
let queue: Promise<void> = Promise.resolve();
self.onmessage = (e: MessageEvent<ToSessionThread>): void => {
  queue = queue.then(() => handle(e.data));
};
