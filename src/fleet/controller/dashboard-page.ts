/**
 * The dashboard page: one self-contained HTML document (no external scripts,
 * styles or fonts: controllers often run without internet access). It reads
 * the JSON API, draws the aggregates, alerts, device table and SVG time
 * charts, sends actions with the session's CSRF token, and refreshes on the
 * `/api/events` Server-Sent Events stream. Text from devices is only ever
 * set as text (`textContent`), never parsed as HTML.
 */
import { DEFAULT_SOAK_MS, DEFAULT_WAVES } from "./rollout.ts";

/** The rollout form's defaults: the same as `quantd fleet rollout start`'s. */
const DEFAULT_WAVES_TEXT = `${DEFAULT_WAVES.join(",")}%`;
const DEFAULT_SOAK_TEXT =
  DEFAULT_SOAK_MS % 60_000 === 0 ? `${DEFAULT_SOAK_MS / 60_000}m` : `${DEFAULT_SOAK_MS / 1000}s`;

const STYLE = `
  body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #1d2430; background: #fafbfc; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; display: flex; align-items: baseline; gap: 0.8rem; }
  h1 small { font-weight: normal; color: #667; font-size: 0.85rem; }
  h1 .spacer { flex: 1; }
  h2 { font-size: 1.05rem; margin: 1.2rem 0 0.5rem; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid #e3e6ea; white-space: nowrap; }
  th { font-weight: 600; color: #445; background: #f1f3f5; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td .note { font-size: 0.8em; color: #5a6472; max-width: 10rem; margin-left: auto; white-space: normal; }
  td.why { white-space: normal; color: #a12c2c; max-width: 28rem; }
  td.wrap { white-space: normal; max-width: 22rem; }
  tr.device { cursor: pointer; }
  tr.device:hover, tr.selected { background: #eef4ff; }
  .dot { display: inline-block; width: 0.6rem; height: 0.6rem; border-radius: 50%; margin-right: 0.4rem; }
  .on { background: #2a9d4a; } .off { background: #c23b3b; }
  .cards { display: flex; gap: 0.8rem; flex-wrap: wrap; margin-bottom: 1rem; }
  .card { background: #fff; border: 1px solid #e3e6ea; padding: 0.5rem 0.8rem; min-width: 9rem; }
  .card b { display: block; font-size: 1.25rem; font-variant-numeric: tabular-nums; }
  .card span { color: #667; font-size: 0.8rem; }
  #alerts { list-style: none; padding: 0; margin: 0 0 1rem; }
  p.halt { color: #a12c2c; font-weight: 600; }
  #alerts li { background: #fff4f2; border-left: 4px solid #c23b3b; padding: 0.3rem 0.6rem; margin-bottom: 0.25rem; }
  #alerts li.memory, #alerts li.outbox-drops, #alerts li.degraded { background: #fff9eb; border-color: #dd8b20; }
  .degraded-mark { margin-left: 0.4rem; padding: 0 0.3rem; border-radius: 3px; background: #dd8b20; color: #fff; font-size: 0.75rem; }
  #alerts .kind { font-weight: 600; margin-right: 0.5rem; }
  .bar { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; margin: 0.6rem 0; }
  .bar label { color: #445; }
  button { font: inherit; padding: 0.25rem 0.7rem; border: 1px solid #9aa5b1; background: #fff; border-radius: 3px; cursor: pointer; }
  button:disabled { color: #99a; border-color: #d5d9de; cursor: not-allowed; }
  button.go { background: #2b6cb0; color: #fff; border-color: #2b6cb0; }
  .note { color: #8a5a00; }
  #action-result { color: #334; white-space: pre-wrap; }
  #detail { margin-top: 1.5rem; display: none; }
  .charts { display: grid; grid-template-columns: repeat(2, 560px); gap: 1rem; }
  figure { margin: 0; background: #fff; border: 1px solid #e3e6ea; padding: 0.6rem; }
  figcaption { font-weight: 600; margin-bottom: 0.3rem; }
  svg text { font-size: 10px; fill: #556; }
  svg .grid { stroke: #eceff2; } svg .axis { stroke: #99a3ad; }
  .empty { color: #889; padding: 1rem 0; }
  .p50 { color: #2b6cb0; } .p95 { color: #dd6b20; } .agr { color: #2a9d4a; } .mem { color: #6b46c1; } .rate { color: #2c7a7b; } .lim { color: #c23b3b; }
  .marker { font-weight: 600; } .marker.promoted { color: #2a9d4a; } .marker.rollback { color: #c23b3b; }
  #trust { margin-top: 1rem; } #refused { color: #445; } code { font-size: 0.85rem; }
`;

/** The HTML served at `/`. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>quantd fleet</title>
<style>${STYLE}</style>
</head>
<body>
<h1>quantd fleet <small id="summary">loading…</small><span class="spacer"></span>
  <small id="who"></small><button id="logout" hidden>log out</button></h1>
<div class="cards" id="aggregates"></div>
<ul id="alerts"></ul>
<div class="bar">
  <label>fleet <select id="filter-fleet"><option value="">all</option></select></label>
  <label>state <select id="filter-state"><option value="">all</option><option>online</option><option>offline</option><option>alerting</option></select></label>
</div>
<div class="bar" id="actions">
  <span id="selected-count">0 selected</span>
  <button data-action="recalibrate">recalibrate</button>
  <button data-action="quantize-dynamic">quantize-dynamic</button>
  <button data-action="rollback">rollback</button>
  <button data-action="bench">bench</button>
  <span id="confirm" hidden>Send <b id="confirm-what"></b>? <button class="go" id="confirm-go">send</button> <button id="confirm-cancel">cancel</button></span>
  <span class="note" id="actions-note" hidden></span>
</div>
<div class="bar" id="rollout-actions">
  <label>release <select id="rollout-release"></select></label>
  <label>on fleet <select id="rollout-fleet"></select></label>
  <label>waves <input id="rollout-waves" value="${DEFAULT_WAVES_TEXT}" size="12"></label>
  <label>gate <input id="rollout-gate" placeholder="agreement=99.5,latencyRatio=1.1,errorRate=0.01" size="34"></label>
  <label>soak <input id="rollout-soak" value="${DEFAULT_SOAK_TEXT}" size="5"></label>
  <button id="rollout-start">start rollout</button>
</div>
<div id="action-result"></div>
<table>
  <thead><tr>
    <th><input type="checkbox" id="select-all" title="select every listed device"></th>
    <th>device</th><th>fleet</th><th>model</th><th>kind</th><th>int8 p50</th><th>fp32 p50</th>
    <th>agreement</th><th>p95 now</th><th>memory</th><th>outbox</th><th>last job</th><th>seen</th>
  </tr></thead>
  <tbody id="devices"></tbody>
</table>
<div class="empty" id="none" hidden>No device matches.</div>
<section id="rollouts" hidden>
  <h2>Rollouts</h2>
  <div id="rollout-list"></div>
</section>
<section id="trust">
  <p id="refused">Refused device messages: –</p>
  <div id="pending-box" hidden>
    <h2>Devices waiting for enrolment</h2>
    <p>These devices are not enrolled; nothing they send is stored. Confirm a key only when it is the one the device printed (<code>quantd fleet enroll</code> does the same from a shell).</p>
    <table><thead><tr><th>device</th><th>fleet</th><th>public key</th><th>first seen</th><th></th></tr></thead><tbody id="pending"></tbody></table>
  </div>
</section>
<section id="detail">
  <h2 id="detail-title"></h2>
  <p id="status-history"></p>
  <div class="bar" id="detail-actions"></div>
  <div class="charts">
    <figure><figcaption>Latency, ms (<span class="p50">p50</span>, <span class="p95">p95</span> of each telemetry interval)</figcaption><svg id="latency" width="540" height="210"></svg></figure>
    <figure><figcaption>Memory, MiB (<span class="mem">resident</span><span id="mem-limit-label"></span>)</figcaption><svg id="memory" width="540" height="210"></svg></figure>
    <figure><figcaption>Request rate, <span class="rate">texts/s</span></figcaption><svg id="rate" width="540" height="210"></svg></figure>
    <figure><figcaption>Agreement with fp32, % (<span class="agr">per report</span>)</figcaption><svg id="accuracy" width="540" height="210"></svg></figure>
  </div>
  <h2>Model versions</h2>
  <table><thead><tr><th>since</th><th>version</th><th>kind</th><th>how</th><th>job</th></tr></thead><tbody id="models"></tbody></table>
  <h2>Jobs</h2>
  <table><thead><tr><th>updated</th><th>job</th><th>type</th><th>state</th><th>stage</th><th>agreement</th><th>int8 p50</th><th>stages</th><th>reason</th></tr></thead><tbody id="jobs"></tbody></table>
</section>
<script>
"use strict";
let selected = null;
let session = null;
const picked = new Set();
let listed = [];
const fmtMs = (v) => (typeof v === "number" ? v.toFixed(2) + " ms" : "–");
const fmtPct = (v) => (typeof v === "number" ? (v * 100).toFixed(1) + " %" : "–");
const floorPct = (v) => (Math.floor(v * 1000 + 1e-7) / 10).toFixed(1) + " %";
// A task's own figure: a share of samples as a percentage, a coefficient (cosine, Pearson) to 4 places.
const fmtTaskMetric = (m) =>
  m && typeof m.value === "number"
    ? m.share ? fmtPct(m.value) + " " + m.name : m.name + " " + m.value.toFixed(4)
    : "";
// The agreement cell: the agreement, then in small lines the gate's lower bound when the report has it
// (rounded down, as quantd prints it everywhere: a bound never reads above a gate it missed) and, for
// another task than a sentence classifier, what agreed and the task's own figure:
// "99.6 %", "≥ 99.5 %", "token-classification: tokens", "97.5 % samples whose every token agrees".
function agreementCell(tr, f) {
  const td = cell(tr, fmtPct(f.agreement), "num");
  const notes = [];
  const note = (cls, text) => {
    const div = document.createElement("div");
    div.className = "note " + cls;
    div.textContent = text;
    td.appendChild(div);
    notes.push(text);
  };
  if (typeof f.agreement !== "number") return td;
  if (typeof f.agreementLower === "number") note("bound", "≥ " + floorPct(f.agreementLower));
  if (typeof f.task === "string") {
    note("task", f.task);
    const figure = fmtTaskMetric(f.taskMetric);
    if (figure !== "") note("task-metric", figure);
  }
  if (notes.length > 0) td.title = notes.join("; ");
  return td;
}
const fmtMem = (v) => (typeof v === "number" ? (v / 1048576).toFixed(0) + " MiB" : "–");
const pad2 = (n) => String(n).padStart(2, "0");
const clock = (t, seconds) => { const d = new Date(t); return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (seconds ? ":" + pad2(d.getSeconds()) : ""); };
const stamp = (t) => {
  if (typeof t !== "number" || t <= 0) return "–";
  const d = new Date(t);
  return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " + clock(t, true);
};
const ago = (t) => {
  if (typeof t !== "number") return "–";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  return s < 120 ? s + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : s < 172800 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago";
};
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
// Replaces a table body's rows: one row per item, filled by fill(tr, item).
function fillRows(body, items, fill) {
  body.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    fill(tr, item);
    body.appendChild(tr);
  }
}
const api = (path) => fetch(path, { credentials: "same-origin" }).then((r) => {
  if (r.status === 401) { location.href = "/login"; throw new Error("log in"); }
  return r.json();
});
function post(path, body) {
  return fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-quantd-csrf": session && session.csrf ? session.csrf : "" },
    body: JSON.stringify(body),
  }).then((r) => r.json());
}
function query() {
  const q = new URLSearchParams();
  const f = document.getElementById("filter-fleet").value, s = document.getElementById("filter-state").value;
  if (f) q.set("fleet", f);
  if (s) q.set("state", s);
  return q.toString();
}
function card(parent, value, label) {
  const c = document.createElement("div");
  c.className = "card";
  const b = document.createElement("b");
  b.textContent = value;
  const s = document.createElement("span");
  s.textContent = label;
  c.append(b, s);
  parent.appendChild(c);
}
const countList = (o) => Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, n]) => n + " × " + k).join(", ") || "–";
function renderOverview(view) {
  const a = view.aggregates;
  document.getElementById("summary").textContent = a.devices + " devices, " + a.online + " online";
  const cards = document.getElementById("aggregates");
  cards.replaceChildren();
  card(cards, a.online + " / " + a.devices, "online");
  card(cards, countList(a.byKind), "devices by model kind");
  card(cards, countList(a.byVersion), "devices by model version");
  card(cards, a.worstAgreement ? fmtPct(a.worstAgreement.value) : "–", "worst agreement" + (a.worstAgreement ? " (" + a.worstAgreement.device + ")" : ""));
  card(cards, a.slowestP95Ms ? fmtMs(a.slowestP95Ms.value) : "–", "slowest p95" + (a.slowestP95Ms ? " (" + a.slowestP95Ms.device + ")" : ""));
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren();
  for (const x of view.alerts.slice(0, 20)) {
    const li = document.createElement("li");
    li.className = x.kind;
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = x.kind.replace("-", " ");
    li.append(k, x.device + " (" + x.fleet + "): " + x.message + ", " + ago(x.at));
    alerts.appendChild(li);
  }
  if (view.alerts.length > 20) {
    const li = document.createElement("li");
    li.textContent = (view.alerts.length - 20) + " more alerts";
    alerts.appendChild(li);
  }
  for (const f of view.fleets) {
    addOption(document.getElementById("filter-fleet"), f, f);
    addOption(document.getElementById("rollout-fleet"), f, f);
  }
}
function jobText(r) {
  if (!r) return "–";
  return r.type + " " + r.state + " " + ago(r.finishedAt);
}
async function loadDevices() {
  const view = await api("/api/overview?" + query());
  renderOverview(view);
  const devices = view.devices;
  listed = devices.map((d) => d.fleet + "/" + d.device);
  for (const k of [...picked]) if (!listed.includes(k)) picked.delete(k);
  document.getElementById("none").hidden = devices.length > 0;
  fillRows(document.getElementById("devices"), devices, (tr, d) => {
    const key = d.fleet + "/" + d.device;
    tr.className = "device" + (key === selected ? " selected" : "");
    tr.dataset.key = key;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = picked.has(key);
    box.addEventListener("click", (e) => { e.stopPropagation(); if (box.checked) picked.add(key); else picked.delete(key); updateActions(); });
    cell(tr, "").appendChild(box);
    const first = cell(tr, d.device);
    const dot = document.createElement("span");
    dot.className = "dot " + (d.online ? "on" : "off");
    dot.title = d.online ? "online" : "offline";
    first.prepend(dot);
    cell(tr, d.fleet);
    const version = cell(tr, d.model ? d.model.version : "–");
    // Serving a stored version because the model it was started with did not load: the reason on hover and in the alerts.
    if (d.degraded) {
      const mark = document.createElement("span");
      mark.className = "degraded-mark";
      mark.textContent = "degraded";
      mark.title = d.degraded;
      version.appendChild(mark);
    }
    cell(tr, d.model ? d.model.kind : "–");
    cell(tr, fmtMs(d.figures.int8P50Ms), "num");
    cell(tr, fmtMs(d.figures.fp32P50Ms), "num");
    agreementCell(tr, d.figures);
    cell(tr, fmtMs(d.lastTelemetry && d.lastTelemetry.latencyMs ? d.lastTelemetry.latencyMs.p95 : undefined), "num");
    cell(tr, fmtMem(d.lastTelemetry ? d.lastTelemetry.rssBytes : undefined), "num");
    cell(tr, d.outbox ? d.outbox.queued + " / " + d.outbox.dropped + " dropped" : "–");
    const last = cell(tr, jobText(d.lastReport));
    if (d.lastReport && d.lastReport.reason) {
      last.className = "why";
      last.textContent = jobText(d.lastReport) + ": " + d.lastReport.reason;
    }
    cell(tr, ago(d.lastSeen));
    tr.addEventListener("click", () => { selected = key; loadDevices(); loadDetail(); });
  });
  document.getElementById("select-all").checked = listed.length > 0 && listed.every((k) => picked.has(k));
  updateActions();
}
// ---- actions
let pendingAction = null;
function actionTargets(keys) {
  return keys.map((k) => { const i = k.indexOf("/"); return { fleet: k.slice(0, i), device: k.slice(i + 1) }; });
}
function updateActions() {
  document.getElementById("selected-count").textContent = picked.size + " selected";
  const enabled = session && session.actions.enabled;
  for (const b of document.querySelectorAll("#actions button[data-action]")) {
    b.disabled = !enabled || picked.size === 0;
    b.title = !enabled ? session ? "disabled: " + session.actions.reason : "" : picked.size === 0 ? "select devices first" : b.dataset.action + " on the selected devices";
  }
  for (const b of document.querySelectorAll("#detail-actions button")) {
    b.disabled = !enabled;
    b.title = enabled ? b.dataset.action + " on this device" : "disabled: " + (session ? session.actions.reason : "");
  }
  updateRolloutStart();
}
function updateRolloutStart() {
  const enabled = session && session.actions.enabled;
  const b = document.getElementById("rollout-start");
  const release = document.getElementById("rollout-release").value, fleet = document.getElementById("rollout-fleet").value;
  b.disabled = !enabled || !release || !fleet;
  b.title = !enabled ? (session ? "disabled: " + session.actions.reason : "") :
    !release ? "no release stored: quantd fleet release create DIR" : !fleet ? "no fleet with devices" : "start a rollout of this release on the fleet";
}
// Rollouts go through the confirm step too; what is sent is the CLI's rollout start|pause|resume|abort.
function askRollout(label, path, body) {
  pendingAction = { rollout: { label, path, body } };
  document.getElementById("confirm-what").textContent = label;
  document.getElementById("confirm").hidden = false;
}
async function sendRollout({ label, path, body }) {
  const out = document.getElementById("action-result");
  out.textContent = label + "…";
  const res = await post(path, body);
  out.textContent = res.error ? label + ": " + res.error.code + ": " + res.error.message : label + ": rollout " + res.id + " " + res.state;
  loadRollouts();
}
document.getElementById("rollout-start").addEventListener("click", () => {
  const sel = document.getElementById("rollout-release");
  const fleet = document.getElementById("rollout-fleet").value;
  askRollout("start rollout of " + sel.selectedOptions[0].textContent + " on fleet " + fleet, "/api/rollouts", {
    release: sel.value, fleet,
    waves: document.getElementById("rollout-waves").value.trim(),
    gate: document.getElementById("rollout-gate").value.trim(),
    soak: document.getElementById("rollout-soak").value.trim(),
  });
});
for (const id of ["rollout-release", "rollout-fleet"]) document.getElementById(id).addEventListener("change", updateRolloutStart);
function addOption(sel, value, text) {
  if ([...sel.options].some((o) => o.value === value)) return;
  const o = document.createElement("option");
  o.value = value; o.textContent = text;
  sel.appendChild(o);
}
async function loadReleases() {
  const sel = document.getElementById("rollout-release");
  for (const r of await api("/api/releases")) addOption(sel, r.id, r.version + " (" + r.id.slice(0, 12) + ")");
  updateRolloutStart();
}
function ask(action, keys) {
  pendingAction = { action, keys };
  document.getElementById("confirm-what").textContent = action + " to " + (keys.length === 1 ? keys[0] : keys.length + " devices");
  document.getElementById("confirm").hidden = false;
}
async function send() {
  if (pendingAction === null) return;
  const { action, keys, rollout } = pendingAction;
  pendingAction = null;
  document.getElementById("confirm").hidden = true;
  if (rollout) return await sendRollout(rollout);
  const out = document.getElementById("action-result");
  out.textContent = "sending " + action + " to " + keys.length + " device(s)…";
  const res = await post("/api/actions", { action, targets: actionTargets(keys) });
  if (res.error) { out.textContent = action + ": " + res.error.code + ": " + res.error.message; return; }
  out.textContent = res.outcomes.map((o) => o.fleet + "/" + o.device + ": " + action + " " + o.state + (o.error ? " (" + o.error.code + ": " + o.error.message + ")" : " job " + o.id)).join("\\n");
  loadDetail();
}
for (const b of document.querySelectorAll("#actions button[data-action]")) b.addEventListener("click", () => ask(b.dataset.action, [...picked]));
document.getElementById("confirm-go").addEventListener("click", send);
document.getElementById("confirm-cancel").addEventListener("click", () => { pendingAction = null; document.getElementById("confirm").hidden = true; });
document.getElementById("select-all").addEventListener("change", (e) => {
  for (const k of listed) if (e.target.checked) picked.add(k); else picked.delete(k);
  loadDevices();
});
for (const id of ["filter-fleet", "filter-state"]) document.getElementById(id).addEventListener("change", loadDevices);
// ---- charts: a time axis, a value axis with its unit, grid lines
function niceStep(span, count) {
  const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}
function drawChart(svg, series, opts) {
  const W = Number(svg.getAttribute("width")), H = Number(svg.getAttribute("height"));
  const L = 52, R = 12, T = 10, B = 26;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  svg.replaceChildren();
  const points = series.flatMap((s) => s.points);
  if (points.length === 0) { el("text", { x: 10, y: 20 }, opts.empty || "no data yet"); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 - x0 < 10000) { const mid = (x0 + x1) / 2; x0 = mid - 5000; x1 = mid + 5000; }
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (opts.yMin !== undefined) y0 = Math.min(y0, opts.yMin);
  // A flat series gets a visible range around it, so its axis does not read "100 %" at both ends.
  const minSpan = opts.minSpan || 1e-9;
  if (y1 - y0 < minSpan) { const mid = (y0 + y1) / 2; y0 = mid - minSpan / 2; y1 = mid + minSpan / 2; if (opts.yMin !== undefined && y0 < opts.yMin) { y0 = opts.yMin; y1 = y0 + minSpan; } }
  if (opts.yMax !== undefined && y1 > opts.yMax) { y0 -= y1 - opts.yMax; y1 = opts.yMax; }
  const step = niceStep(y1 - y0, 4);
  y0 = Math.floor(y0 / step) * step; y1 = Math.ceil(y1 / step) * step;
  if (y1 === y0) y1 = y0 + step;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const decimals = Math.max(0, -Math.floor(Math.log10(step * (opts.scale || 1)) + 1e-9));
  for (let v = y0; v <= y1 + step / 2; v += step) {
    el("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "grid" });
    el("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" }, (v * (opts.scale || 1)).toFixed(decimals));
  }
  el("text", { x: 2, y: T + 2, "dominant-baseline": "hanging" }, opts.unit);
  el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
  el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
  const span = x1 - x0;
  const tstep = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 300e3, 600e3, 1800e3, 3600e3, 6 * 3600e3, 86400e3, 7 * 86400e3].find((s) => span / s <= 6) || 30 * 86400e3;
  const seconds = tstep < 60e3;
  for (let t = Math.ceil(x0 / tstep) * tstep; t <= x1; t += tstep) {
    el("line", { x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, class: "axis" });
    const d = new Date(t);
    el("text", { x: sx(t), y: H - B + 15, "text-anchor": "middle" }, span > 2 * 86400e3 ? (d.getMonth() + 1) + "/" + d.getDate() + " " + clock(t) : clock(t, seconds));
  }
  for (const s of series) {
    if (s.points.length === 0) continue;
    const path = el("polyline", {
      fill: "none", stroke: s.color, "stroke-width": "1.5",
      points: s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
    });
    if (s.dash) path.setAttribute("stroke-dasharray", "4 3");
    path.dataset.series = s.name;
    // A series of one or two points draws its points too: a polyline of one point is invisible.
    if (s.dots || s.points.length < 3) for (const p of s.points) el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color });
  }
}
function detailButtons(key) {
  const bar = document.getElementById("detail-actions");
  bar.replaceChildren();
  for (const action of session ? session.actions.commands : []) {
    const b = document.createElement("button");
    b.textContent = action;
    b.dataset.action = action;
    b.addEventListener("click", () => ask(action, [key]));
    bar.appendChild(b);
  }
  updateActions();
}
async function loadDetail() {
  if (selected === null) return;
  const i = selected.indexOf("/");
  const fleet = selected.slice(0, i), device = selected.slice(i + 1);
  const base = "/api/devices/" + encodeURIComponent(fleet) + "/" + encodeURIComponent(device);
  const [detail, samples] = await Promise.all([api(base), api(base + "/telemetry?since=" + (Date.now() - 3600000))]);
  if (detail.error) return;
  const section = document.getElementById("detail");
  const first = section.style.display !== "block";
  section.style.display = "block";
  document.getElementById("detail-title").textContent = device + " (" + fleet + ")";
  if (first || document.getElementById("detail-actions").dataset.key !== selected) {
    detailButtons(selected);
    document.getElementById("detail-actions").dataset.key = selected;
  }
  const lat = samples.filter((s) => s.latencyMs);
  drawChart(document.getElementById("latency"), [
    { name: "p50", color: "#2b6cb0", points: lat.map((s) => [s.at, s.latencyMs.p50]) },
    { name: "p95", color: "#dd6b20", points: lat.map((s) => [s.at, s.latencyMs.p95]) },
  ], { unit: "ms", yMin: 0, empty: "no requests served in the last hour" });
  const mem = samples.filter((s) => typeof s.rssBytes === "number");
  const limits = mem.filter((s) => typeof s.memoryLimitBytes === "number");
  // A limit far above the process (physical memory, no MemoryMax=) would flatten the chart: say it instead.
  const peak = Math.max(0, ...mem.map((s) => s.rssBytes));
  const limit = limits.length > 0 ? limits[limits.length - 1].memoryLimitBytes : undefined;
  const drawLimit = limit !== undefined && limit <= 4 * peak;
  const limitLabel = document.getElementById("mem-limit-label");
  limitLabel.replaceChildren();
  if (limit !== undefined) {
    const l = document.createElement("span");
    l.className = "lim";
    l.textContent = drawLimit ? "limit" : "limit " + fmtMem(limit);
    limitLabel.append(", ", l);
  }
  drawChart(document.getElementById("memory"), [
    { name: "rss", color: "#6b46c1", points: mem.map((s) => [s.at, s.rssBytes / 1048576]) },
    { name: "limit", color: "#c23b3b", dash: true, points: drawLimit ? limits.map((s) => [s.at, s.memoryLimitBytes / 1048576]) : [] },
  ], { unit: "MiB", yMin: 0 });
  const rate = samples.filter((s) => typeof s.requestRate === "number");
  drawChart(document.getElementById("rate"), [
    { name: "rate", color: "#2c7a7b", points: rate.map((s) => [s.at, s.requestRate]) },
  ], { unit: "texts/s", yMin: 0, minSpan: 1 });
  const reports = (detail.reports || []).filter((r) => typeof r.figures.agreement === "number").reverse();
  drawChart(document.getElementById("accuracy"), [
    { name: "agreement", color: "#2a9d4a", dots: true, points: reports.map((r) => [r.finishedAt || 0, r.figures.agreement]) },
  ], { unit: "%", scale: 100, minSpan: 0.01, yMax: 1, empty: "no report with an agreement yet" });
  document.getElementById("status-history").textContent = "Status: " + (detail.history.length === 0 ? "–" :
    detail.history.slice(0, 8).map((h) => h.state + (h.reason ? " (" + h.reason + ")" : "") + " " + stamp(h.at)).join(" · "));
  fillRows(document.getElementById("models"), detail.models, (tr, m) => {
    cell(tr, stamp(m.at));
    cell(tr, m.version);
    cell(tr, m.kind || "–");
    cell(tr, m.marker, "marker " + m.marker);
    cell(tr, m.jobId || "–");
  });
  fillRows(document.getElementById("jobs"), detail.jobs, (tr, j) => {
    cell(tr, stamp(j.updatedAt));
    cell(tr, j.id);
    cell(tr, j.type);
    cell(tr, j.state);
    cell(tr, j.stage || (j.state === "IN_PROGRESS" ? Math.round(j.progress * 100) + " %" : "–"));
    agreementCell(tr, j.figures);
    cell(tr, fmtMs(j.figures.int8P50Ms), "num");
    cell(tr, j.stageMs ? Object.entries(j.stageMs).map(([k, v]) => k + " " + (v / 1000).toFixed(1) + " s").join(", ") : "–", "wrap");
    cell(tr, j.reason || "", "why");
  });
}
async function loadTrust() {
  const [stats, pendingKeys] = await Promise.all([api("/api/stats"), api("/api/enrolments?state=pending")]);
  const r = stats.refused;
  document.getElementById("refused").textContent =
    "Refused device messages: " + r.unsigned + " unsigned, " + r.badSignature + " bad signature, " +
    r.notEnrolled + " from devices not enrolled; " + stats.oversize + " oversize";
  document.getElementById("pending-box").hidden = pendingKeys.length === 0;
  fillRows(document.getElementById("pending"), pendingKeys, (tr, e) => {
    cell(tr, e.device);
    cell(tr, e.fleet);
    cell(tr, e.publicKey);
    cell(tr, ago(e.at));
    const td = cell(tr, "");
    const button = document.createElement("button");
    button.textContent = "confirm";
    button.addEventListener("click", async () => {
      const url = "/api/enrolments/" + encodeURIComponent(e.fleet) + "/" + encodeURIComponent(e.device) + "/confirm";
      await post(url, { publicKey: e.publicKey });
      loadTrust();
    });
    td.appendChild(button);
  });
}
// Rollouts: each wave's devices with their state, the figures that decided them, and the halt reason.
async function loadRollouts() {
  const rollouts = await api("/api/rollouts");
  const box = document.getElementById("rollout-list");
  box.replaceChildren();
  document.getElementById("rollouts").hidden = rollouts.length === 0;
  for (const r of rollouts.slice(0, 3)) {
    const b = r.body;
    const head = document.createElement("p");
    head.className = "rollout";
    head.textContent = r.id + " · release " + b.releaseVersion + " · fleet " + r.fleet + " · " + r.state +
      " · wave " + Math.min(b.current + 1, b.waves.length) + " of " + b.waves.length + " · updated " + ago(r.updatedAt);
    box.appendChild(head);
    if (b.haltReason) {
      const why = document.createElement("p");
      why.className = "halt";
      why.textContent = "halted: " + b.haltReason;
      box.appendChild(why);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    const enabled = session && session.actions.enabled;
    const allowed = { pause: r.state === "running", resume: r.state === "paused", abort: r.state !== "aborted" && r.state !== "completed" };
    for (const action of ["pause", "resume", "abort"]) {
      const button = document.createElement("button");
      button.textContent = action;
      button.dataset.rolloutAction = action;
      button.dataset.rollout = r.id;
      button.disabled = !enabled || !allowed[action];
      button.title = !enabled ? "disabled: " + (session ? session.actions.reason : "") : allowed[action] ? action + " rollout " + r.id : "the rollout is " + r.state;
      button.addEventListener("click", () => askRollout(action + " rollout " + r.id, "/api/rollouts/" + encodeURIComponent(r.id) + "/" + action, {}));
      bar.appendChild(button);
    }
    box.appendChild(bar);
    const table = document.createElement("table");
    const thead = document.createElement("tr");
    for (const h of ["wave", "device", "state", "agreement", "bench latency ratio", "post-swap latency ratio", "error rate", "reason"]) {
      const th = document.createElement("th");
      th.textContent = h;
      thead.appendChild(th);
    }
    table.appendChild(thead);
    b.waves.forEach((w, i) => {
      for (const name of w.devices) {
        const d = b.devices[name] || {};
        const f = d.figures || {};
        const tr = document.createElement("tr");
        tr.dataset.rolloutDevice = name;
        cell(tr, (i + 1) + " " + w.state);
        cell(tr, name);
        cell(tr, d.state || "–");
        cell(tr, fmtPct(f.agreement), "num");
        cell(tr, typeof f.latencyRatio === "number" ? f.latencyRatio.toFixed(3) : "–", "num");
        cell(tr, typeof f.telemetryLatencyRatio === "number" ? f.telemetryLatencyRatio.toFixed(3) : "–", "num");
        cell(tr, typeof f.errorRate === "number" ? (f.errorRate * 100).toFixed(2) + " %" : "–", "num");
        cell(tr, d.reason || "", "why");
        table.appendChild(tr);
      }
    });
    box.appendChild(table);
  }
}
let pending = false;
function refresh() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; loadDevices(); loadDetail(); loadTrust(); }, 100);
}
async function start() {
  session = await api("/api/session");
  document.getElementById("who").textContent = session.authRequired ? "signed in as " + session.user : "loopback, no login";
  document.getElementById("logout").hidden = !session.authRequired;
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "x-quantd-csrf": session.csrf || "" } });
    location.href = "/login";
  });
  const note = document.getElementById("actions-note");
  note.hidden = session.actions.enabled;
  note.textContent = session.actions.enabled ? "" : "Actions disabled: " + session.actions.reason;
  setInterval(loadTrust, 5000);
  setInterval(() => { loadRollouts(); loadReleases(); }, 3000);
  loadRollouts();
  loadReleases();
  // Ages and offline alerts move with time even when no device speaks.
  setInterval(refresh, 15000);
  loadTrust();
  const events = new EventSource("/api/events");
  events.addEventListener("changed", refresh);
  await loadDevices();
  // Open on something: the first device's history and charts.
  if (selected === null && listed.length > 0) { selected = listed[0]; loadDevices(); loadDetail(); }
}
start();
</script>
</body>
</html>
`;

/** The login page: a token, or a username and password, whichever the controller was given. */
export function loginPage(methods: { token: boolean; user: boolean }, error?: string): string {
  const fields = [
    methods.user
      ? `<p><label>username <input name="username" autocomplete="username"></label></p>
  <p><label>password <input name="password" type="password" autocomplete="current-password"></label></p>`
      : "",
    methods.token
      ? `<p>${methods.user ? "or " : ""}<label>token <input name="token" type="password" autocomplete="off"></label></p>`
      : "",
  ].join("\n  ");
  const body =
    methods.token || methods.user
      ? `<form method="post" action="/login">
  ${error === undefined ? "" : `<p class="err">${error}</p>`}
  ${fields}
  <p><button type="submit">log in</button></p>
</form>`
      : `<p>This dashboard listens on loopback without credentials: no login needed. <a href="/">Open it</a>.</p>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>quantd fleet: log in</title>
<style>body { font: 14px system-ui, sans-serif; margin: 3rem auto; max-width: 26rem; color: #1d2430; } .err { color: #a12c2c; } input { font: inherit; }</style>
</head><body><h1>quantd fleet</h1>
${body}
</body></html>
`;
}
