/**
 * Reading a request: its JSON body within the size limit, and the texts or
 * pairs it carries checked against the request limits. Every route that takes
 * a body reads it here, so each refusal has one wording and one error code.
 */
import { QuantdError } from "../errors.ts";
import { validateText } from "../runtime/text.ts";

/** Request size limits. */
export interface RequestLimits {
  maxBodyBytes: number;
  maxTexts: number;
  maxTextBytes: number;
  /** Most tokens in one request, counted by the routes' `countTokens` (unchecked without it). */
  maxRequestTokens?: number;
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Reads a body of undeclared length (chunked), refusing it as soon as it passes `maxBytes`. */
async function readLimited(
  req: Request,
  maxBytes: number,
  tooLarge: (n: string) => QuantdError,
): Promise<Uint8Array> {
  if (req.body === null) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(`more than ${maxBytes}`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

/**
 * Reads a JSON body within the size limit.
 *
 * @throws UNSUPPORTED_MEDIA_TYPE unless the content type is application/json
 * @throws REQUEST_TOO_LARGE when the body exceeds `maxBytes` (checked on Content-Length first, then while reading)
 * @throws REQUEST_INVALID when the body is not valid UTF-8 JSON
 */
export async function readJsonBody(req: Request, maxBytes: number): Promise<unknown> {
  const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json") {
    throw new QuantdError(
      "UNSUPPORTED_MEDIA_TYPE",
      `content type must be application/json, got ${type === "" ? "none" : type}`,
      { details: { contentType: type } },
    );
  }
  const declared = Number(req.headers.get("content-length") ?? Number.NaN);
  const tooLarge = (n: number | string): QuantdError =>
    new QuantdError("REQUEST_TOO_LARGE", `request body is ${n} bytes, more than the limit of ${maxBytes}`, {
      details: { maxBytes },
    });
  if (Number.isFinite(declared) && declared > maxBytes) throw tooLarge(declared);
  let bytes: Uint8Array;
  // A declared length within the limit is what the server reads at most: one buffer, no stream.
  if (Number.isFinite(declared)) bytes = new Uint8Array(await req.arrayBuffer());
  else bytes = await readLimited(req, maxBytes, tooLarge);
  let text: string;
  try {
    text = STRICT_UTF8.decode(bytes);
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", "request body is not valid UTF-8", { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", `request body is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Checks a request's texts against the limits.
 *
 * @throws REQUEST_INVALID when it is not a non-empty array or has more than `maxTexts`
 * @throws TEXT_NOT_STRING | TEXT_EMPTY | TEXT_TOO_LARGE | TEXT_INVALID_UTF8 naming the bad index
 */
export function checkTexts(value: unknown, limits: RequestLimits, what = "texts"): string[] {
  if (!Array.isArray(value)) throw new QuantdError("REQUEST_INVALID", `${what} must be an array of strings`);
  if (value.length === 0)
    throw new QuantdError("REQUEST_INVALID", `${what} is empty: give at least one text`);
  if (value.length > limits.maxTexts) {
    throw new QuantdError(
      "REQUEST_TOO_LARGE",
      `${what} has ${value.length} texts, more than the limit of ${limits.maxTexts}`,
      {
        details: { count: value.length, maxTexts: limits.maxTexts },
      },
    );
  }
  return value.map((t, i) => validateText(t, { maxBytes: limits.maxTextBytes, what: `${what}[${i}]` }));
}

/**
 * Pairs from a request's `pairs`: a list of `[a, b]` lists of two texts.
 *
 * @throws REQUEST_INVALID / REQUEST_TOO_LARGE / TEXT_* as {@link checkTexts}, naming the bad pair
 */
export function checkPairs(value: unknown, limits: RequestLimits, what = "pairs"): [string, string][] {
  if (!Array.isArray(value))
    throw new QuantdError("REQUEST_INVALID", `${what} must be a list of [text, text] pairs`);
  if (value.length === 0)
    throw new QuantdError("REQUEST_INVALID", `${what} is empty: give at least one pair`);
  // A pair is two texts: the text limit counts both.
  if (value.length * 2 > limits.maxTexts) {
    throw new QuantdError(
      "REQUEST_TOO_LARGE",
      `${what} has ${value.length} pairs (${value.length * 2} texts), more than the limit of ${limits.maxTexts} texts`,
      { details: { count: value.length * 2, maxTexts: limits.maxTexts } },
    );
  }
  return value.map((p, i) => {
    if (!Array.isArray(p) || p.length !== 2) {
      throw new QuantdError("REQUEST_INVALID", `${what}[${i}] must be a list of two texts [a, b]`, {
        details: { index: i },
      });
    }
    const text = (t: unknown, k: number) =>
      validateText(t, { maxBytes: limits.maxTextBytes, what: `${what}[${i}][${k}]` });
    return [text(p[0], 0), text(p[1], 1)];
  });
}
