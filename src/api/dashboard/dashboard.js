// The pma-cache dashboard: asks for the API key (kept in sessionStorage, sent only in the
// X-API-Key header), then polls /status every second and draws what it says.
"use strict";

const KEY = "pma-cache-api-key";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

let timer = null;
let shownFailure = null;
let screenshotUrl = null;

function key() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = { "X-API-Key": key(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) { signOut("That key was refused."); throw new Error("unauthorized"); }
  return response;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  clearTimeout(timer);
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  // Nothing read with the key stays on the page.
  for (const id of ["rows", "last-updated", "age", "sync-state", "phase", "last-error", "last-error-time", "next-run", "refresh-result"]) $(id).textContent = "";
  $("history").replaceChildren();
  $("chart").replaceChildren();
  for (const id of ["query-head", "query-rows", "query-chart"]) $(id).replaceChildren();
  for (const id of ["query-info", "query-error", "query-table-name"]) $(id).textContent = "";
  $("sql").value = "";
  $("screenshot").removeAttribute("src");
  if (screenshotUrl) URL.revokeObjectURL(screenshotUrl);
  screenshotUrl = null;
  shownFailure = null;
}

function duration(seconds) {
  if (seconds == null) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function when(rfc3339) {
  return rfc3339 ? new Date(rfc3339).toLocaleString() : "–";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function drawHistory(recent) {
  const rows = recent.map((s) => {
    const tr = document.createElement("tr");
    tr.append(cell(when(s.started_at)), cell(s.duration_seconds.toFixed(1) + " s"),
      cell(s.rows == null ? "–" : s.rows.toLocaleString()), cell(s.kind || "–"), cell(s.result, s.result));
    if (s.error) tr.title = s.error;
    return tr;
  });
  $("history").replaceChildren(...rows);

  // Oldest on the left; bar height is the duration, colour the result. The axis on the left
  // gives the scale in seconds: 0, half and the top, a round number at or above the longest.
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  // Drawn at the box's own width, so that the labels keep their shape.
  const width = Math.max(300, $("chart").clientWidth || 600);
  const height = 120, axis = 44, top = 8, bottom = 16, slot = (width - axis) / 20;
  const plot = height - top - bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const chronological = [...recent].reverse();
  const scale = niceCeiling(Math.max(1, ...chronological.map((s) => s.duration_seconds)));
  for (const tick of [0, scale / 2, scale]) {
    const y = top + plot - (tick / scale) * plot;
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", axis); line.setAttribute("x2", width);
    line.setAttribute("y1", y); line.setAttribute("y2", y);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", axis - 4); label.setAttribute("y", y + 3);
    label.setAttribute("text-anchor", "end");
    label.setAttribute("class", "tick");
    label.textContent = `${+tick.toFixed(1)} s`;
    svg.append(line, label);
  }
  const caption = document.createElementNS(ns, "text");
  caption.setAttribute("x", axis); caption.setAttribute("y", height - 3);
  caption.textContent = "duration of each sync, oldest on the left";
  svg.append(caption);
  chronological.forEach((s, i) => {
    const rect = document.createElementNS(ns, "rect");
    const h = Math.max(3, (s.duration_seconds / scale) * plot);
    rect.setAttribute("x", axis + i * slot + 3);
    rect.setAttribute("y", top + plot - h);
    rect.setAttribute("width", slot - 6);
    rect.setAttribute("height", h);
    rect.setAttribute("class", s.result);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${when(s.started_at)}: ${s.result}, ${s.duration_seconds.toFixed(1)} s`;
    rect.append(title);
    svg.append(rect);
  });
  $("chart").replaceChildren(svg);
}

// The smallest of 1, 2, 5 × a power of ten at or above `value`.
function niceCeiling(value) {
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

async function showScreenshot(lastFailure) {
  if (!lastFailure || lastFailure === shownFailure) return;
  shownFailure = lastFailure;
  const response = await api("/failures/latest.png");
  if (!response.ok) { $("screenshot-box").hidden = true; return; }
  if (screenshotUrl) URL.revokeObjectURL(screenshotUrl);
  screenshotUrl = URL.createObjectURL(await response.blob());
  $("screenshot").src = screenshotUrl;
  $("screenshot-name").textContent = response.headers.get("X-Failure-File") || "";
  $("screenshot-box").hidden = false;
}

// The refresh answer ("triggered", "already in progress") stays until the sync it was about has
// ended: a new entry in the history, or a new version of the cache (a worker's, on a replica).
let refreshShownFor = null;

function syncMarker(status) {
  const newest = (status.sync.recent || [])[0];
  return `${newest ? newest.started_at : ""}|${status.cache.last_updated || ""}`;
}

function draw(status) {
  const cache = status.cache, sync = status.sync;
  if (refreshShownFor !== null && sync.state !== "running" && syncMarker(status) !== refreshShownFor) {
    $("refresh-result").textContent = "";
    refreshShownFor = null;
  }
  $("rows").textContent = cache.count == null ? "no cache" : cache.count.toLocaleString();
  $("last-updated").textContent = when(cache.last_updated);
  $("last-updated").dataset.time = cache.last_updated || "";
  const age = $("age");
  age.textContent = duration(cache.age_seconds);
  age.classList.toggle("stale", !!cache.stale);
  age.title = `stale after ${duration(cache.stale_after_seconds)}`;
  const state = $("sync-state");
  state.textContent = sync.configured ? sync.state : "not configured";
  state.className = sync.state === "running" ? "running" : "";
  $("phase").textContent = sync.phase ? sync.phase.replaceAll("_", " ") : "";
  $("refresh").disabled = !sync.configured || sync.state === "running";
  $("next-run").textContent = sync.next_run ? `next scheduled: ${when(sync.next_run)}` : "";
  const failedLast = sync.last_failure && (!sync.last_success || sync.last_failure > sync.last_success);
  $("last-error-box").hidden = !sync.last_error;
  $("last-error-box").classList.toggle("current", !!failedLast);
  $("last-error").textContent = sync.last_error || "";
  $("last-error-time").textContent = sync.last_failure ? when(sync.last_failure) : "";
  drawHistory(sync.recent || []);
  showScreenshot(sync.last_failure).catch(() => {});
}

async function poll() {
  clearTimeout(timer);
  try {
    const response = await api("/status");
    if (response.ok) draw(await response.json());
  } catch (e) {
    if (e.message === "unauthorized") return;
  }
  if (key()) timer = setTimeout(poll, POLL_MS);
}

const NUMERIC = /^(integer|unsigned|double|decimal)/;

// Runs the SQL in the box and shows the answer: a table, and a chart when the answer is
// label and number pairs.
async function runQuery() {
  $("query-error").textContent = "";
  $("query-info").textContent = "running…";
  const started = performance.now();
  let response;
  try {
    response = await api("/query?" + new URLSearchParams({ sql: $("sql").value, _shape: "arrays" }));
  } catch (e) { return; }
  const body = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
  if (!response.ok) {
    $("query-info").textContent = "";
    $("query-error").textContent = body.message || `HTTP ${response.status}`;
    return;
  }
  const ms = Math.round(performance.now() - started);
  $("query-info").textContent = `${body.rows.length.toLocaleString()} row${body.rows.length === 1 ? "" : "s"}` +
    `${body.truncated ? " (cut at QUERY_MAX_ROWS)" : ""} in ${ms} ms`;
  const head = document.createElement("tr");
  for (const c of body.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    th.title = c.type;
    head.append(th);
  }
  $("query-head").replaceChildren(head);
  const numeric = body.columns.map((c) => NUMERIC.test(c.type));
  $("query-rows").replaceChildren(...body.rows.slice(0, 1000).map((row) => {
    const tr = document.createElement("tr");
    row.forEach((v, i) => tr.append(cell(v === null ? "NULL" : String(v), numeric[i] ? "number" : "")));
    return tr;
  }));
  drawAnswerChart(body);
}

function drawAnswerChart(body) {
  const chart = $("query-chart");
  const pairs = body.columns.length === 2 && !NUMERIC.test(body.columns[0].type) &&
    NUMERIC.test(body.columns[1].type) && body.rows.length > 0 && body.rows.length <= 500;
  if (!pairs) { chart.replaceChildren(); return; }
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = Math.max(300, chart.clientWidth || 600), height = 160, top = 8, bottom = 18;
  const values = body.rows.map((r) => Number(r[1]) || 0);
  const max = Math.max(...values.map(Math.abs), 1e-9);
  const slot = width / values.length, plot = height - top - bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  body.rows.forEach((row, i) => {
    const rect = document.createElementNS(ns, "rect");
    const h = Math.max(1, (Math.abs(values[i]) / max) * plot);
    rect.setAttribute("x", i * slot + Math.min(2, slot / 4));
    rect.setAttribute("y", top + plot - h);
    rect.setAttribute("width", Math.max(1, slot - Math.min(4, slot / 2)));
    rect.setAttribute("height", h);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${row[0]}: ${row[1]}`;
    rect.append(title);
    svg.append(rect);
  });
  const caption = document.createElementNS(ns, "text");
  caption.setAttribute("x", 2); caption.setAttribute("y", height - 4);
  caption.textContent = `${body.columns[1].name} by ${body.columns[0].name} (highest: ${Math.max(...values)})`;
  svg.append(caption);
  chart.replaceChildren(svg);
}

// Names the served table and offers a first query over it.
async function describeTable() {
  try {
    const response = await api("/tables");
    if (!response.ok) return;
    const table = (await response.json()).tables[0];
    $("query-table-name").textContent = table.name;
    if (!$("sql").value) $("sql").value = `SELECT * FROM \`${table.name}\` LIMIT 20`;
  } catch (e) { /* signed out */ }
}

function open() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  poll();
  describeTable();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key").value = "";
    $("login-error").textContent = "";
    open();
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runQuery();
  });
  $("refresh").addEventListener("click", async () => {
    $("refresh").disabled = true;
    try {
      const before = await api("/status").then((r) => r.json()).catch(() => null);
      const response = await api("/refresh", { method: "POST" });
      const body = await response.json();
      $("refresh-result").textContent = body.status || body.message || "";
      refreshShownFor = response.ok && before ? syncMarker(before) : null;
    } catch (e) { /* signed out */ }
    poll();
  });
  if (key()) open();
});
