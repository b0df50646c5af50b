/**
 * The dashboard's HTTP responses and request bodies: JSON never cached,
 * pages with headers that forbid framing and anything loaded from elsewhere,
 * errors rendered from {@link QuantdError} with the status its code means.
 */
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";

/** A JSON response, never cached. */
export function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
}

/**
 * Headers of the dashboard's pages: no framing (a page that acts must not be
 * clickjacked), nothing loaded from elsewhere, forms posted only here.
 */
const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "content-security-policy":
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  // same-origin, not no-referrer: with no-referrer a form post says `Origin: null` and the login check refuses it.
  "referrer-policy": "same-origin",
};

/** A page of the dashboard. */
export function html(body: string, status = 200): Response {
  return new Response(body, { status, headers: PAGE_HEADERS });
}

/** `NOT_FOUND` for `what`, as JSON. */
export function notFound(what: string): Response {
  return json({ error: new QuantdError("NOT_FOUND", `${what} not found`).toJSON() }, 404);
}

/** An error as JSON, with 404, 409, 400 or 500 by its code (anything not a QuantdError is a bad request). */
export function errorResponse(err: unknown): Response {
  const e = QuantdError.from(err, "REQUEST_INVALID");
  const status =
    e.code === "NOT_FOUND"
      ? 404
      : e.code === "STATE_CONFLICT"
        ? 409
        : e.code === "REQUEST_INVALID" || e.code === "CONFIG_INVALID" || e.code === "USAGE"
          ? 400
          : 500;
  return json({ error: e.toJSON() }, status);
}

/**
 * A request's JSON object body.
 *
 * @throws REQUEST_INVALID when it is not JSON or not an object
 */
export async function readJsonBody(req: Request): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await req.json();
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", "the body is not JSON", { cause: err });
  }
  if (!isRecord(body)) throw new QuantdError("REQUEST_INVALID", "the body must be a JSON object");
  return body;
}
