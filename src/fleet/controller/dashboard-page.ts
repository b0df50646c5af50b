/**
 * The dashboard page: one self-contained HTML document (no external scripts,
 * styles or fonts: controllers often run without internet access). It reads
 * the JSON API, draws the device table and SVG charts, and refreshes on the
 * `/api/events` Server-Sent Events stream.
 */

/** The HTML served at `/`. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>quantd fleet</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #1d2430; background: #fafbfc; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  h1 small { font-weight: normal; color: #667; font-size: 0.85rem; margin-left: 0.6rem; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid #e3e6ea; white-space: nowrap; }
  th { font-weight: 600; color: #445; background: #f1f3f5; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.device { cursor: pointer; }
  tr.device:hover, tr.selected { background: #eef4ff; }
  .dot { display: inline-block; width: 0.6rem; height: 0.6rem; border-radius: 50%; margin-right: 0.4rem; }
  .on { background: #2a9d4a; } .off { background: #c23b3b; }
  #detail { margin-top: 1.5rem; display: none; }
  .charts { display: flex; gap: 1.5rem; flex-wrap: wrap; }
  figure { margin: 0; background: #fff; border: 1px solid #e3e6ea; padding: 0.6rem; }
  figcaption { font-weight: 600; margin-bottom: 0.3rem; }
  svg text { font-size: 10px; fill: #667; }
  .empty { color: #889; padding: 1rem 0; }
  .p50 { color: #2b6cb0; } .p95 { color: #dd6b20; } .agr { color: #2a9d4a; }
  #trust { margin-top: 1rem; } #refused { color: #445; } code { font-size: 0.85rem; }
</style>
</head>
<body>
<h1>quantd fleet <small id="summary">loading…</small></h1>
<table>
  <thead><tr>
    <th>device</th><th>fleet</th><th>model</th><th>kind</th><th>int8 p50</th><th>fp32 p50</th>
    <th>agreement</th><th>memory</th><th>outbox</th><th>last report</th><th>seen</th>
  </tr></thead>
  <tbody id="devices"></tbody>
</table>
<div class="empty" id="none" hidden>No device has reported yet.</div>
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
  <div class="charts">
    <figure><figcaption>Latency, ms: <span class="p50">p50</span> / <span class="p95">p95</span> from telemetry</figcaption><svg id="latency" width="520" height="200"></svg></figure>
    <figure><figcaption>Accuracy: <span class="agr">int8/fp32 agreement</span> per report</figcaption><svg id="accuracy" width="520" height="200"></svg></figure>
  </div>
</section>
<script>
"use strict";
let selected = null;
const fmtMs = (v) => (typeof v === "number" ? v.toFixed(2) + " ms" : "–");
const fmtPct = (v) => (typeof v === "number" ? (v * 100).toFixed(1) + " %" : "–");
const fmtMem = (v) => (typeof v === "number" ? (v / 1048576).toFixed(0) + " MiB" : "–");
const ago = (t) => {
  if (typeof t !== "number") return "–";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  return s < 120 ? s + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
};
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
async function loadDevices() {
  const res = await fetch("/api/devices");
  const devices = await res.json();
  const body = document.getElementById("devices");
  body.replaceChildren();
  document.getElementById("none").hidden = devices.length > 0;
  const online = devices.filter((d) => d.online).length;
  document.getElementById("summary").textContent = devices.length + " devices, " + online + " online";
  for (const d of devices) {
    const key = d.fleet + "/" + d.device;
    const tr = document.createElement("tr");
    tr.className = "device" + (key === selected ? " selected" : "");
    tr.dataset.key = key;
    const first = cell(tr, d.device);
    const dot = document.createElement("span");
    dot.className = "dot " + (d.online ? "on" : "off");
    dot.title = d.online ? "online" : "offline";
    first.prepend(dot);
    cell(tr, d.fleet);
    cell(tr, d.model ? d.model.version : "–");
    cell(tr, d.model ? d.model.kind : "–");
    cell(tr, fmtMs(d.figures.int8P50Ms), "num");
    cell(tr, fmtMs(d.figures.fp32P50Ms), "num");
    cell(tr, fmtPct(d.figures.agreement), "num");
    cell(tr, fmtMem(d.lastTelemetry ? d.lastTelemetry.rssBytes : undefined), "num");
    cell(tr, d.outbox ? d.outbox.queued + " / " + d.outbox.dropped + " dropped" : "–");
    cell(tr, d.lastReport ? d.lastReport.type + " " + d.lastReport.state + " " + ago(d.lastReport.finishedAt) : "–");
    cell(tr, ago(d.lastSeen));
    tr.addEventListener("click", () => { selected = key; loadDevices(); loadDetail(); });
    body.appendChild(tr);
  }
}
function drawChart(svg, series, opts) {
  const W = Number(svg.getAttribute("width")), H = Number(svg.getAttribute("height")), P = 30;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const points = series.flatMap((s) => s.points);
  if (points.length === 0) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 10); t.setAttribute("y", 20); t.textContent = "no data yet";
    svg.appendChild(t);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const sx = (x) => P + ((x - x0) / (x1 - x0)) * (W - 2 * P);
  const sy = (y) => H - P + 10 - ((y - y0) / (y1 - y0)) * (H - 2 * P);
  for (const [v, label] of [[y0, y0], [y1, y1]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 2); t.setAttribute("y", sy(v) + 3); t.textContent = opts.fmt(label);
    svg.appendChild(t);
  }
  for (const s of series) {
    if (s.points.length === 0) continue;
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", s.color);
    path.setAttribute("stroke-width", "1.5");
    path.setAttribute("points", s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "));
    path.dataset.series = s.name;
    svg.appendChild(path);
  }
}
async function loadDetail() {
  if (selected === null) return;
  const [fleet, device] = selected.split("/");
  const base = "/api/devices/" + encodeURIComponent(fleet) + "/" + encodeURIComponent(device);
  const [detail, samples] = await Promise.all([
    fetch(base).then((r) => r.json()),
    fetch(base + "/telemetry?since=" + (Date.now() - 3600000)).then((r) => r.json()),
  ]);
  document.getElementById("detail").style.display = "block";
  document.getElementById("detail-title").textContent = device + " (" + fleet + ")";
  const lat = samples.filter((s) => s.latencyMs);
  drawChart(document.getElementById("latency"), [
    { name: "p50", color: "#2b6cb0", points: lat.map((s) => [s.at, s.latencyMs.p50]) },
    { name: "p95", color: "#dd6b20", points: lat.map((s) => [s.at, s.latencyMs.p95]) },
  ], { fmt: (v) => v.toFixed(1), yMin: 0 });
  const reports = (detail.reports || []).filter((r) => typeof r.figures.agreement === "number").reverse();
  drawChart(document.getElementById("accuracy"), [
    { name: "agreement", color: "#2a9d4a", points: reports.map((r) => [r.finishedAt || 0, r.figures.agreement]) },
  ], { fmt: (v) => (v * 100).toFixed(1) + "%" });
}
async function loadTrust() {
  const [stats, pendingKeys] = await Promise.all([
    fetch("/api/stats").then((r) => r.json()),
    fetch("/api/enrolments?state=pending").then((r) => r.json()),
  ]);
  const r = stats.refused;
  document.getElementById("refused").textContent =
    "Refused device messages: " + r.unsigned + " unsigned, " + r.badSignature + " bad signature, " +
    r.notEnrolled + " from devices not enrolled; " + stats.oversize + " oversize";
  const body = document.getElementById("pending");
  body.replaceChildren();
  document.getElementById("pending-box").hidden = pendingKeys.length === 0;
  for (const e of pendingKeys) {
    const tr = document.createElement("tr");
    cell(tr, e.device);
    cell(tr, e.fleet);
    cell(tr, e.publicKey);
    cell(tr, ago(e.at));
    const td = cell(tr, "");
    const button = document.createElement("button");
    button.textContent = "confirm";
    button.addEventListener("click", async () => {
      const url = "/api/enrolments/" + encodeURIComponent(e.fleet) + "/" + encodeURIComponent(e.device) + "/confirm";
      await fetch(url, { method: "POST", headers: { "content-type": "application/json", "x-quantd-confirm": "1" }, body: JSON.stringify({ publicKey: e.publicKey }) });
      loadTrust();
    });
    td.appendChild(button);
    body.appendChild(tr);
  }
}
let pending = false;
function refresh() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; loadDevices(); loadDetail(); loadTrust(); }, 100);
}
setInterval(loadTrust, 5000);
loadTrust();
const events = new EventSource("/api/events");
events.addEventListener("changed", refresh);
loadDevices();
</script>
</body>
</html>
`;
