/**
 * The QuantdError code a piece of work fails with, so a test can assert the
 * stable code (`expect(codeOf(() => f())).toBe("MODEL_NOT_ONNX")`) and a wrong
 * kind of failure still names itself in the assertion message.
 */
import { isQuantdError } from "../../src/errors.ts";

function describeError(err: unknown): string {
  return isQuantdError(err) ? err.code : `not a QuantdError: ${String(err)}`;
}

/** The code `fn` throws; `undefined` when it returns normally. */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return describeError(err);
  }
  return undefined;
}

/** The code `work` (a promise, or a function returning one) rejects with; `undefined` when it resolves. */
export async function codeOfAsync(
  work: Promise<unknown> | (() => Promise<unknown>),
): Promise<string | undefined> {
  try {
    await (typeof work === "function" ? work() : work);
  } catch (err) {
    return describeError(err);
  }
  return undefined;
}
