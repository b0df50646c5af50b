/**
 * The hand-written Prometheus exposition: counters, gauges and cumulative
 * histograms in text format 0.0.4, label escaping, and the status each error
 * code maps to.
 */
import { describe, expect, test } from "bun:test";
import { Counter, Gauge, Histogram, MetricsRegistry } from "../../src/server/metrics.ts";
import { checkTexts } from "../../src/server/request-body.ts";
import { statusFor } from "../../src/server/status.ts";

describe("exposition format", () => {
  test("counter, gauge and histogram render as Prometheus text", () => {
    const r = new MetricsRegistry();
    const c = r.add(new Counter("t_requests_total", "Requests"));
    c.inc({ route: "/a", status: "200" });
    c.inc({ route: "/a", status: "200" }, 2);
    c.inc({ route: "/b", status: "404" });
    let depth = 3;
    r.add(new Gauge("t_depth", "Depth", () => [{ labels: {}, value: depth }]));
    const h = r.add(new Histogram("t_latency_seconds", "Latency", [0.1, 0.01, 1]));
    h.observe(0.005);
    h.observe(0.05);
    h.observe(5);
    depth = 4;
    const text = r.render();
    expect(text.endsWith("\n")).toBe(true);
    const lines = text.trim().split("\n");
    expect(lines).toEqual([
      "# HELP t_requests_total Requests",
      "# TYPE t_requests_total counter",
      't_requests_total{route="/a",status="200"} 3',
      't_requests_total{route="/b",status="404"} 1',
      "# HELP t_depth Depth",
      "# TYPE t_depth gauge",
      "t_depth 4",
      "# HELP t_latency_seconds Latency",
      "# TYPE t_latency_seconds histogram",
      't_latency_seconds_bucket{le="0.01"} 1',
      't_latency_seconds_bucket{le="0.1"} 2',
      't_latency_seconds_bucket{le="1"} 2',
      't_latency_seconds_bucket{le="+Inf"} 3',
      "t_latency_seconds_sum 5.055",
      "t_latency_seconds_count 3",
    ]);
    expect(c.get({ route: "/a", status: "200" })).toBe(3);
  });

  test("label values are escaped", () => {
    const r = new MetricsRegistry();
    r.add(new Counter("t", "x")).inc({ v: 'a"b\\c\nd' });
    expect(r.render()).toContain('t{v="a\\"b\\\\c\\nd"} 1');
  });
});

describe("errors to statuses", () => {
  test("client errors are 4xx, overload 503, the rest 500", () => {
    expect(statusFor("REQUEST_INVALID")).toBe(400);
    expect(statusFor("TEXT_EMPTY")).toBe(400);
    expect(statusFor("TEXT_NOT_STRING")).toBe(400);
    expect(statusFor("NOT_FOUND")).toBe(404);
    expect(statusFor("REQUEST_TOO_LARGE")).toBe(413);
    expect(statusFor("UNSUPPORTED_MEDIA_TYPE")).toBe(415);
    expect(statusFor("OVERLOADED")).toBe(503);
    expect(statusFor("NOT_READY")).toBe(503);
    expect(statusFor("INFERENCE_FAILED")).toBe(500);
    expect(statusFor("INTERNAL")).toBe(500);
  });

  test("checkTexts names the bad index and applies the limits", () => {
    const limits = { maxBodyBytes: 1000, maxTexts: 2, maxTextBytes: 5 };
    expect(checkTexts(["ab", "cd"], limits)).toEqual(["ab", "cd"]);
    expect(() => checkTexts(["ab", 3], limits)).toThrow("texts[1] must be a string");
    expect(() => checkTexts(["abcdef"], limits)).toThrow("more than the limit of 5 bytes");
    expect(() => checkTexts(["a", "b", "c"], limits)).toThrow("more than the limit of 2");
    expect(() => checkTexts([], limits)).toThrow("empty");
    expect(() => checkTexts({ 0: "a" }, limits)).toThrow("array of strings");
  });
});
