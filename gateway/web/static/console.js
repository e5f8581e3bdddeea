/* amr-gateway console (issue 19, first slice): sign-in, overview, meter page.
 * Plain JavaScript, no build step, no library, nothing from another origin. The session is an
 * HttpOnly cookie the gateway set at sign-in; writes send the session's CSRF token as
 * X-CSRF-Token. Every text comes from strings-<lang>.json via t(key). */
"use strict";

const POLL_MS = 5000;
const PAGE_SIZE = 50;
const LANGS = ["zh-CN", "en"];
const state = {
  lang: "en", strings: {}, csrf: null, role: null,
  meters: [], sortKey: "id", sortDir: 1, filter: "", page: 0, timer: null,
};

function t(key, vars) {
  let s = state.strings[key];
  if (s === undefined) { s = key; }
  for (const [k, v] of Object.entries(vars || {})) { s = s.replace("{" + k + "}", String(v)); }
  return s;
}

function pickLang() {
  const saved = localStorage.getItem("amr.lang");
  if (saved && LANGS.includes(saved)) { return saved; }
  const nav = (navigator.language || "en").toLowerCase();
  return nav.startsWith("zh") ? "zh-CN" : "en";
}

async function loadLang(lang) {
  const resp = await fetch("/console/static/strings-" + lang + ".json");
  state.strings = await resp.json();
  state.lang = lang;
  document.documentElement.lang = lang;
  document.getElementById("lang").value = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) { el.textContent = t(el.dataset.i18n); }
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  document.title = t("app.title");
  showWho();
}

function showWho() {
  const who = document.getElementById("who");
  who.hidden = !state.role;
  who.textContent = state.role ? t("who.role", { role: t("role." + state.role) }) : "";
  document.getElementById("signout").hidden = !state.role;
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, v); }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, String(v)); }
  return e;
}

async function api(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  if (resp.status === 401) { signedOut(); throw new Error(t("error.signed_out")); }
  if (!resp.ok) {
    let msg = resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp.json();
}

function show(page) {
  for (const id of ["signin-page", "overview-page", "meter-page"]) {
    document.getElementById(id).hidden = id !== page;
  }
}

function signedOut() {
  state.role = null; state.csrf = null;
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  showWho();
  show("signin-page");
}

async function signIn(ev) {
  ev.preventDefault();
  const input = document.getElementById("token");
  const err = document.getElementById("signin-error");
  err.textContent = "";
  const resp = await fetch("/console/signin", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: input.value }),
  });
  if (!resp.ok) { err.textContent = t("signin.wrong"); return; }
  const body = await resp.json();
  input.value = "";
  state.role = body.role; state.csrf = body.csrf;
  showWho();
  route();
}

async function signOut() {
  await fetch("/console/signout", {
    method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": state.csrf || "" },
  });
  location.hash = "#/";
  signedOut();
}

/* ---------------------------------------------------------------- overview */

function fmtTime(iso) {
  if (!iso) { return "—"; }
  const d = new Date(iso);
  return d.toLocaleString(state.lang, { hour12: false });
}

function fmtRate(r) { return r === null || r === undefined ? "—" : (r * 100).toFixed(1) + "%"; }

function compare(a, b) {
  const k = state.sortKey;
  const x = a[k], y = b[k];
  if (x === y) { return 0; }
  if (x === null || x === undefined) { return 1; }
  if (y === null || y === undefined) { return -1; }
  return (x < y ? -1 : 1) * state.sortDir;
}

function visibleMeters() {
  const f = state.filter.trim().toLowerCase();
  const rows = f ? state.meters.filter((m) =>
    [m.id, m.customer, m.last_quality, m.last_error].some((v) => v && String(v).toLowerCase().includes(f)))
    : state.meters.slice();
  rows.sort(compare);
  return rows;
}

function renderMeters() {
  const rows = visibleMeters();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const tbody = document.querySelector("#meters tbody");
  tbody.replaceChildren();
  for (const m of rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) {
    const tr = el("tr", { "data-meter": m.id });
    const idCell = el("td");
    idCell.appendChild(el("a", { href: "#/meter/" + encodeURIComponent(m.id) }, m.id));
    tr.appendChild(idCell);
    tr.appendChild(el("td", {}, m.customer || "—"));
    tr.appendChild(el("td", { "data-col": "last_good" }, fmtTime(m.last_good)));
    const q = m.last_quality;
    tr.appendChild(el("td", { class: q === "good" ? "q-good" : "q-bad" }, q ? t("quality." + q) : "—"));
    tr.appendChild(el("td", {}, fmtRate(m.success_rate)));
    tr.appendChild(el("td", {}, m.last_error || ""));
    tbody.appendChild(tr);
  }
  document.getElementById("page").textContent = t("pager.page", { page: state.page + 1, pages: pages, rows: rows.length });
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = state.page >= pages - 1;
  for (const th of document.querySelectorAll("#meters th[data-sort]")) {
    th.classList.toggle("asc", th.dataset.sort === state.sortKey && state.sortDir > 0);
    th.classList.toggle("desc", th.dataset.sort === state.sortKey && state.sortDir < 0);
  }
}

function renderHealth(h) {
  const dl = document.getElementById("store");
  dl.replaceChildren();
  const s = h.store;
  const items = s ? [
    ["store.size", (s.size_bytes / 1048576).toFixed(1) + " MiB"],
    ["store.free", s.free_bytes === null ? "—" : (s.free_bytes / 1073741824).toFixed(1) + " GiB"],
    ["store.pressure", t("pressure." + s.pressure)],
    ["store.pending", s.pending],
    ["store.error", s.last_error || "—"],
  ] : [["store.state", t("store.closed")]];
  for (const [k, v] of items) { dl.appendChild(el("dt", {}, t(k))); dl.appendChild(el("dd", {}, v)); }
  const tbody = document.querySelector("#sinks tbody");
  tbody.replaceChildren();
  for (const sink of h.sinks || []) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, sink.name || "—"));
    tr.appendChild(el("td", {}, sink.state || "—"));
    tr.appendChild(el("td", {}, sink.backlog !== undefined ? sink.backlog : "—"));
    tbody.appendChild(tr);
  }
  if (!(h.sinks || []).length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 3 }, t("sinks.none"))); }
}

async function refreshOverview() {
  try {
    const [m, h] = await Promise.all([api("/api/v1/meters"), api("/api/v1/health")]);
    state.meters = m.meters;
    renderMeters();
    renderHealth(h);
    document.getElementById("updated").textContent = t("overview.updated", { time: fmtTime(new Date().toISOString()) });
  } catch (e) {
    document.getElementById("updated").textContent = e.message;
  }
}

/* ---------------------------------------------------------------- meter page */

function drawCurve(container, doc) {
  /* The whole window of the readings document (the gateway's last 24 h) on the x axis. The
   * chart's points carry their exact time and value (data-ts, data-value) so the browser test
   * compares them with the API. A gap (no good power_kw) breaks the line. */
  const readings = doc.readings || [];
  const W = 960, H = 260, L = 50, R = 10, T = 10, B = 30;
  const pts = [];
  for (const r of readings) {
    const p = (r.points || {}).power_kw;
    if (r.quality !== "good" || !p || p.value === null || p.value === undefined) { pts.push(null); continue; }
    pts.push({ ts: r.ts, t: Date.parse(r.ts), v: Number(p.value) });
  }
  const good = pts.filter((p) => p);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("meter.curve") });
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  container.replaceChildren(svg);
  if (!good.length) { container.appendChild(el("p", {}, t("meter.no_data"))); return; }
  const t0 = Date.parse(doc.from), t1 = Date.parse(doc.to);
  let v0 = Math.min(0, ...good.map((p) => p.v)), v1 = Math.max(...good.map((p) => p.v));
  if (v1 === v0) { v1 = v0 + 1; }
  const x = (tt) => L + (t1 === t0 ? 0.5 : (tt - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - ((v - v0) / (v1 - v0)) * (H - T - B);
  let seg = [];
  const flush = () => {
    if (seg.length) { svg.appendChild(svgEl("polyline", { class: "line", points: seg.join(" ") })); }
    seg = [];
  };
  for (const p of pts) {
    if (!p) { flush(); continue; }
    seg.push(`${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
  }
  flush();
  for (const p of good) {
    svg.appendChild(svgEl("circle", { class: "pt", cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2,
      "data-ts": p.ts, "data-value": String(p.v) }));
  }
  for (const v of [v0, v1]) {
    const label = svgEl("text", { x: 4, y: y(v) + 4 });
    label.textContent = v.toFixed(1);
    svg.appendChild(label);
  }
  for (const tt of [t0, t1]) {
    const label = svgEl("text", { x: Math.min(x(tt), W - 120), y: H - 8 });
    label.textContent = fmtTime(new Date(tt).toISOString());
    svg.appendChild(label);
  }
}

function drawBars(container, doc) {
  /* One slot per 15-minute interval; an interval that is not complete is a gap (a pale band,
   * no bar), never a zero. */
  const W = 960, H = 200, L = 50, R = 10, T = 10, B = 30;
  const items = doc.intervals || [];
  const reg = (doc.registers || [])[0];
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("meter.intervals") });
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  container.replaceChildren(svg);
  if (!items.length || !reg) { container.appendChild(el("p", {}, t("meter.no_data"))); return; }
  const vals = items.map((i) => (i.status === "complete" ? Number(i.consumption[reg]) : null));
  if (vals.every((v) => v === null)) { container.appendChild(el("p", {}, t("meter.no_data"))); }
  const vmax = Math.max(1e-9, ...vals.filter((v) => v !== null));
  const bw = (W - L - R) / items.length;
  items.forEach((i, k) => {
    const xk = L + k * bw;
    const v = vals[k];
    if (v === null) {
      svg.appendChild(svgEl("rect", { class: "gap", x: xk.toFixed(2), y: T, width: Math.max(bw, 0.5).toFixed(2),
        height: H - T - B, "data-start": i.start, "data-status": i.status }));
      return;
    }
    const h = (v / vmax) * (H - T - B);
    svg.appendChild(svgEl("rect", { class: "bar", x: xk.toFixed(2), y: (H - B - h).toFixed(2),
      width: Math.max(bw - 0.3, 0.5).toFixed(2), height: h.toFixed(2), "data-start": i.start,
      "data-status": i.status, "data-value": String(v) }));
  });
  const label = svgEl("text", { x: 4, y: T + 10 });
  label.textContent = vmax.toFixed(2) + " " + reg;
  svg.appendChild(label);
}

async function showMeter(id) {
  show("meter-page");
  document.getElementById("meter-id").textContent = id;
  const err = document.getElementById("meter-error");
  err.textContent = "";
  const enc = encodeURIComponent(id);
  try {
    const readings = await api(`/api/v1/meters/${enc}/readings?limit=100000`);
    drawCurve(document.getElementById("curve"), readings);
    // the gateway's time, not the browser's: the readings document ends at the gateway's now
    const from = new Date(Date.parse(readings.to) - 7 * 86400000).toISOString();
    const intervals = await api(`/api/v1/meters/${enc}/intervals?from=${encodeURIComponent(from)}`);
    drawBars(document.getElementById("bars"), intervals);
  } catch (e) {
    err.textContent = e.message;
  }
}

/* ---------------------------------------------------------------- routing */

function route() {
  if (!state.role) { show("signin-page"); return; }
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  const m = location.hash.match(/^#\/meter\/(.+)$/);
  if (m) { showMeter(decodeURIComponent(m[1])); return; }
  show("overview-page");
  refreshOverview();
  state.timer = setInterval(refreshOverview, POLL_MS);
}

async function start() {
  await loadLang(pickLang());
  document.getElementById("lang").addEventListener("change", (ev) => {
    localStorage.setItem("amr.lang", ev.target.value);
    loadLang(ev.target.value).then(() => { if (state.role) { route(); } });
  });
  document.getElementById("signin-form").addEventListener("submit", signIn);
  document.getElementById("signout").addEventListener("click", signOut);
  document.getElementById("filter").addEventListener("input", (ev) => {
    state.filter = ev.target.value; state.page = 0; renderMeters();
  });
  document.getElementById("prev").addEventListener("click", () => { state.page -= 1; renderMeters(); });
  document.getElementById("next").addEventListener("click", () => { state.page += 1; renderMeters(); });
  for (const th of document.querySelectorAll("#meters th[data-sort]")) {
    th.addEventListener("click", () => {
      if (state.sortKey === th.dataset.sort) { state.sortDir = -state.sortDir; } else {
        state.sortKey = th.dataset.sort; state.sortDir = 1;
      }
      renderMeters();
    });
  }
  window.addEventListener("hashchange", route);
  const resp = await fetch("/console/session", { credentials: "same-origin" });
  if (resp.ok) {
    const body = await resp.json();
    state.role = body.role; state.csrf = body.csrf;
    showWho();
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
