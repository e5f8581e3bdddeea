/* amr-gateway console (issue 19): sign-in, overview, meter, customer, review worklist, KPIs.
 * Plain JavaScript, no build step, no library, nothing from another origin. The session is an
 * HttpOnly cookie the gateway set at sign-in; writes send the session's CSRF token as
 * X-CSRF-Token. Every text comes from strings-<lang>.json via t(key); a key missing from the
 * table is recorded in window.amrMissingKeys (the browser test fails on any). Charts are plain
 * SVG over series the gateway has already downsampled (GET /api/v1/console/meters/{id}/series). */
"use strict";

const POLL_MS = 5000;
const PAGE_SIZE = 50;
const LANGS = ["zh-CN", "en"];
const CHART_W = 960;
const PAGES = ["signin-page", "overview-page", "meter-page", "customer-page", "worklist-page", "kpi-page"];
const state = {
  lang: "en", strings: {}, csrf: null, role: null,
  meters: [], sortKey: "id", sortDir: 1, filter: "", page: 0, timer: null, rangeDays: 1,
};
window.amrMissingKeys = [];

function t(key, vars) {
  let s = state.strings[key];
  if (s === undefined) {
    if (Object.keys(state.strings).length && !window.amrMissingKeys.includes(key)) { window.amrMissingKeys.push(key); }
    s = key;
  }
  for (const [k, v] of Object.entries(vars || {})) { s = s.replace("{" + k + "}", String(v)); }
  return s;
}

/* a text from the gateway that names a kind (quality, state, event type): translated when the
 * table has it, else shown as the gateway wrote it */
function tk(prefix, value) {
  if (value === null || value === undefined || value === "") { return "—"; }
  const s = state.strings[prefix + value];
  return s === undefined ? String(value) : s;
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
  for (const e of document.querySelectorAll("[data-i18n]")) { e.textContent = t(e.dataset.i18n); }
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) {
    e.placeholder = t(e.dataset.i18nPlaceholder);
  }
  document.title = t("app.title");
  showWho();
}

function showWho() {
  const who = document.getElementById("who");
  who.hidden = !state.role;
  who.textContent = state.role ? t("who.role", { role: t("role." + state.role) }) : "";
  document.getElementById("signout").hidden = !state.role;
  document.getElementById("mainnav").hidden = !state.role;
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, v); }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}

function row(cells, attrs) {
  const tr = el("tr", attrs);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); } else { tr.appendChild(el("td", {}, c)); }
  }
  return tr;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) { e.setAttribute(k, String(v)); }
  return e;
}

async function api(path, opts) {
  const init = Object.assign({ credentials: "same-origin" }, opts || {});
  if (init.method && init.method !== "GET") {
    init.headers = Object.assign({ "Content-Type": "application/json", "X-CSRF-Token": state.csrf || "" }, init.headers || {});
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) { signedOut(); throw new Error(t("error.signed_out")); }
  if (!resp.ok) {
    let msg = resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg); err.status = resp.status; throw err;
  }
  return resp.json();
}

function show(page) {
  for (const id of PAGES) { document.getElementById(id).hidden = id !== page; }
  for (const a of document.querySelectorAll("#mainnav a")) {
    a.classList.toggle("current", a.dataset.page === page);
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

function canWrite() { return state.role === "operator" || state.role === "admin"; }

/* ---------------------------------------------------------------- formatting */

function fmtTime(iso) {
  if (!iso) { return "—"; }
  const d = new Date(iso);
  return d.toLocaleString(state.lang, { hour12: false });
}

function fmtRate(r) { return r === null || r === undefined ? "—" : (r * 100).toFixed(1) + "%"; }
function fmtNum(v, digits) {
  if (v === null || v === undefined || v === "") { return "—"; }
  const n = Number(v);
  return Number.isFinite(n) ? (digits === undefined ? String(v) : n.toFixed(digits)) : String(v);
}
function fmtOffset(s) { return s === null || s === undefined ? "—" : (s > 0 ? "+" : "") + Number(s).toFixed(0) + " s"; }

function dl(container, items) {
  container.replaceChildren();
  for (const [k, v] of items) { container.appendChild(el("dt", {}, t(k))); container.appendChild(el("dd", {}, v)); }
}

/* ---------------------------------------------------------------- overview */

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
    [m.id, m.customer, m.bus, m.last_quality, m.last_error].some((v) => v && String(v).toLowerCase().includes(f)))
    : state.meters.slice();
  rows.sort(compare);
  return rows;
}

function renderMeters() {
  const rows = visibleMeters();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.max(0, Math.min(state.page, pages - 1));
  const tbody = document.querySelector("#meters tbody");
  const frag = document.createDocumentFragment();
  for (const m of rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) {
    const tr = el("tr", { "data-meter": m.id });
    const idCell = el("td");
    idCell.appendChild(el("a", { href: "#/meter/" + encodeURIComponent(m.id) }, m.id));
    tr.appendChild(idCell);
    const cust = el("td");
    if (m.customer) { cust.appendChild(el("a", { href: "#/customer/" + encodeURIComponent(m.customer) }, m.customer)); } else { cust.textContent = "—"; }
    tr.appendChild(cust);
    tr.appendChild(el("td", {}, m.bus));
    tr.appendChild(el("td", { "data-col": "last_good" }, fmtTime(m.last_good)));
    const q = m.last_quality;
    tr.appendChild(el("td", { class: q === "good" ? "q-good" : "q-bad" }, q ? tk("quality.", q) : "—"));
    tr.appendChild(el("td", {}, fmtRate(m.success_rate)));
    tr.appendChild(el("td", { "data-col": "clock_offset_s" }, fmtOffset(m.clock_offset_s)));
    tr.appendChild(el("td", { class: "err" }, m.last_error || ""));
    frag.appendChild(tr);
  }
  tbody.replaceChildren(frag);
  document.getElementById("page").textContent = t("pager.page", { page: state.page + 1, pages: pages, rows: rows.length });
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = state.page >= pages - 1;
  for (const th of document.querySelectorAll("#meters th[data-sort]")) {
    th.classList.toggle("asc", th.dataset.sort === state.sortKey && state.sortDir > 0);
    th.classList.toggle("desc", th.dataset.sort === state.sortKey && state.sortDir < 0);
  }
}

function renderHealth(h) {
  const s = h.store;
  dl(document.getElementById("store"), s ? [
    ["store.size", (s.size_bytes / 1048576).toFixed(1) + " MiB"],
    ["store.free", s.free_bytes === null ? "—" : (s.free_bytes / 1073741824).toFixed(1) + " GiB"],
    ["store.pressure", t("pressure." + s.pressure)],
    ["store.pending", s.pending],
    ["store.error", s.last_error || "—"],
  ] : [["store.state", t("store.closed")]]);
  const tbody = document.querySelector("#sinks tbody");
  tbody.replaceChildren();
  for (const sink of h.sinks || []) {
    tbody.appendChild(row([sink.name || "—", sink.state || "—", sink.backlog !== undefined ? sink.backlog : "—",
      fmtTime(sink.oldest_undelivered || null)]));
  }
  if (!(h.sinks || []).length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 4 }, t("sinks.none"))); }
}

function renderOverview(o) {
  const c = o.clock;
  const sync = !c ? t("clock.unknown") : c.synchronized === true ? t("clock.synced")
    : c.synchronized === false ? t("clock.unsynced") : t("clock.unknown");
  dl(document.getElementById("clock"), [
    ["clock.time", fmtTime(o.time)], ["clock.timezone", o.timezone], ["clock.state", sync],
    ["clock.source", c ? c.source : "—"],
  ]);
  document.getElementById("clock").dataset.synchronized = c ? String(c.synchronized) : "unknown";
  const tbody = document.querySelector("#buses tbody");
  tbody.replaceChildren();
  for (const b of o.buses) {
    tbody.appendChild(row([b.id, tk("bus.state.", b.state), `${b.answering}/${b.meters}`, fmtNum(b.requests_per_s, 1),
      b.failures, fmtNum(b.wire_limit_per_s, 1), fmtRate(b.wire_ratio), fmtRate(b.busy_share), b.queue, b.overruns],
    { "data-bus": b.id }));
  }
}

async function refreshOverview() {
  try {
    const [o, h] = await Promise.all([api("/api/v1/console/overview"), api("/api/v1/health")]);
    state.meters = o.meters;
    renderMeters();
    renderOverview(o);
    renderHealth(h);
    document.getElementById("updated").textContent = t("overview.updated", { time: fmtTime(new Date().toISOString()) });
  } catch (e) {
    document.getElementById("updated").textContent = e.message;
  }
}

/* ---------------------------------------------------------------- charts */

function drawSeries(container, doc, names, label) {
  /* Line charts of downsampled series (GET .../series): the mean per bucket as a line, the
   * bucket's min..max as a band, so no peak is averaged away. A raw point (count 1) is drawn
   * as a dot carrying its exact time and value (data-ts, data-value), which the browser test
   * compares with the readings API. A gap longer than three steps breaks the line. */
  const W = CHART_W, H = 260, L = 50, R = 10, T = 10, B = 30;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  container.replaceChildren(svg);
  const present = names.filter((n) => (doc.series[n] || []).length);
  if (!present.length) { container.appendChild(el("p", { class: "nodata" }, t("meter.no_data"))); return; }
  const t0 = Date.parse(doc.from), t1 = Date.parse(doc.to);
  let v0 = 0, v1 = 0;
  for (const n of present) { for (const b of doc.series[n]) { v0 = Math.min(v0, b.min); v1 = Math.max(v1, b.max); } }
  if (v1 === v0) { v1 = v0 + 1; }
  const x = (tt) => L + (t1 === t0 ? 0.5 : (tt - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - ((v - v0) / (v1 - v0)) * (H - T - B);
  const legend = el("div", { class: "legend" });
  present.forEach((n, i) => {
    const items = doc.series[n];
    const at = (b) => b.min_ts || b.start;     // a single value's own read time
    const mid = (b) => (b.count === 1 ? Date.parse(at(b)) : (Date.parse(b.start) + Date.parse(b.end)) / 2);
    const steps = items.slice(1).map((b, k) => mid(b) - mid(items[k])).sort((a, b) => a - b);
    const step = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
    let seg = [], band = [];
    const flush = () => {
      if (band.length > 1) {
        const pts = band.map(([tt, lo]) => `${x(tt).toFixed(1)},${y(lo).toFixed(1)}`)
          .concat(band.slice().reverse().map(([tt, , hi]) => `${x(tt).toFixed(1)},${y(hi).toFixed(1)}`));
        svg.appendChild(svgEl("polygon", { class: `band s${i}`, points: pts.join(" ") }));
      }
      if (seg.length) { svg.appendChild(svgEl("polyline", { class: `line s${i}`, "data-point": n, points: seg.join(" ") })); }
      seg = []; band = [];
    };
    let prev = null;
    for (const b of items) {
      const tm = mid(b);
      if (prev !== null && step > 0 && tm - prev > 3 * step) { flush(); }
      prev = tm;
      const v = b.count === 1 ? b.min : b.avg;
      seg.push(`${x(tm).toFixed(1)},${y(v).toFixed(1)}`);
      if (b.count > 1) { band.push([tm, b.min, b.max]); }
    }
    flush();
    if (i === 0) {
      for (const b of items) {
        if (b.count === 1) {
          svg.appendChild(svgEl("circle", { class: "pt", cx: x(Date.parse(at(b))).toFixed(1), cy: y(b.min).toFixed(1),
            r: 2, "data-ts": at(b), "data-value": String(b.min) }));
        } else {
          svg.appendChild(svgEl("rect", { class: "bucket", x: x(Date.parse(b.start)).toFixed(1), y: y(b.max).toFixed(1),
            width: Math.max(0.5, x(Date.parse(b.end)) - x(Date.parse(b.start))).toFixed(1),
            height: Math.max(0.5, y(b.min) - y(b.max)).toFixed(1), "data-start": b.start, "data-min": String(b.min),
            "data-max": String(b.max), "data-count": String(b.count) }));
        }
      }
    }
    const key = el("span", { class: `key s${i}` }, n);
    legend.appendChild(key);
  });
  for (const v of [v0, v1]) {
    const lab = svgEl("text", { x: 4, y: y(v) + 4 });
    lab.textContent = v.toFixed(1);
    svg.appendChild(lab);
  }
  for (const tt of [t0, t1]) {
    const lab = svgEl("text", { x: Math.min(x(tt), W - 120), y: H - 8 });
    lab.textContent = fmtTime(new Date(tt).toISOString());
    svg.appendChild(lab);
  }
  container.appendChild(legend);
}

function drawBars(container, doc) {
  /* One slot per 15-minute interval; an interval that is not complete is a gap (a pale band,
   * no bar), never a zero. */
  const W = CHART_W, H = 200, L = 50, R = 10, T = 10, B = 30;
  const items = doc.intervals || [];
  const reg = (doc.registers || [])[0];
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("meter.intervals") });
  svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  container.replaceChildren(svg);
  if (!items.length || !reg) { container.appendChild(el("p", { class: "nodata" }, t("meter.no_data"))); return; }
  const vals = items.map((i) => (i.status === "complete" ? Number(i.consumption[reg]) : null));
  if (vals.every((v) => v === null)) { container.appendChild(el("p", { class: "nodata" }, t("meter.no_data"))); }
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
  const lab = svgEl("text", { x: 4, y: T + 10 });
  lab.textContent = vmax.toFixed(2) + " " + reg;
  svg.appendChild(lab);
}

/* ---------------------------------------------------------------- meter page */

const PHASES = ["power_kw", "power_kw_l1", "power_kw_l2", "power_kw_l3"];

function registersTable(points) {
  /* energy registers grouped by register, one column per tariff (total, t1..t4) */
  const groups = {};
  for (const [name, p] of Object.entries(points)) {
    const m = name.match(/^(energy_[a-z_]+?)(?:_t([1-9]))?$/);
    if (!m) { continue; }
    (groups[m[1]] = groups[m[1]] || {})[m[2] ? "t" + m[2] : "total"] = p;
  }
  const tbody = document.querySelector("#registers tbody");
  tbody.replaceChildren();
  for (const name of Object.keys(groups).sort()) {
    const g = groups[name];
    tbody.appendChild(row([name, ...["total", "t1", "t2", "t3", "t4"].map((k) => (g[k] ? fmtNum(g[k].value) : "—"))],
      { "data-register": name }));
  }
  if (!Object.keys(groups).length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 6 }, t("meter.no_data"))); }
}

function instantValues(points) {
  const v = (n) => (points[n] ? fmtNum(points[n].value) + (points[n].unit ? " " + points[n].unit : "") : "—");
  dl(document.getElementById("instant"), [
    ["meter.power", v("power_kw")], ["meter.demand", v("demand_max_kw")],
    ["meter.demand_at", points.demand_max_kw_at ? String(points.demand_max_kw_at.value) : "—"],
    ["meter.pf", v("power_factor")], ["meter.voltage", ["l1", "l2", "l3"].map((p) => v("voltage_v_" + p)).join(" / ")],
    ["meter.current", ["l1", "l2", "l3"].map((p) => v("current_a_" + p)).join(" / ")],
    ["meter.frequency", v("frequency_hz")],
    ["meter.read_at", points.power_kw ? fmtTime(points.power_kw.ts) : "—"],
  ]);
}

function stagesTable(tbody, doc) {
  tbody.replaceChildren();
  const stages = (doc && doc.stages) || [];
  for (const st of stages) {
    const cons = Object.entries(st.consumption || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
    tbody.appendChild(row([st.stage, fmtTime(st.start), fmtTime(st.end),
      `${tk("sq.", st.start_quality)} → ${tk("sq.", st.end_quality)}`,
      st.complete ? t("stage.complete") : t("stage.incomplete"), cons || "—", (st.flags || []).join(", ") || "—"],
    { "data-stage": String(st.stage) }));
  }
  if (!stages.length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 7 }, t("stage.none"))); }
}

function eventsTable(tbody, events) {
  tbody.replaceChildren();
  for (const e of events) {
    tbody.appendChild(row([fmtTime(e.ts), tk("event.", e.type), tk("state.", e.worklist ? e.worklist.state : e.state),
      e.message], { "data-event": String(e.id) }));
  }
  if (!events.length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 4 }, t("events.none"))); }
}

async function showMeter(id) {
  show("meter-page");
  document.getElementById("meter-id").textContent = id;
  const err = document.getElementById("meter-error");
  err.textContent = "";
  const enc = encodeURIComponent(id);
  document.getElementById("range").value = String(state.rangeDays);
  try {
    const latest = await api(`/api/v1/console/meters/${enc}/latest`);
    const cust = document.getElementById("meter-customer");
    cust.replaceChildren();
    if (latest.row.customer) {
      cust.appendChild(el("a", { href: "#/customer/" + encodeURIComponent(latest.row.customer) }, latest.row.customer));
    }
    registersTable(latest.points);
    instantValues(latest.points);
    const to = Date.parse(latest.time) + 1000;
    const days = state.rangeDays;
    const q = days === 1 ? "" : `&from=${encodeURIComponent(new Date(to - days * 86400000).toISOString())}` +
      `&to=${encodeURIComponent(new Date(to).toISOString())}`;
    const from = new Date(to - 7 * 86400000).toISOString();
    // the page's other requests at once: the gateway answers them on its read connections in parallel
    const [series, intervals, events, stages] = await Promise.all([
      api(`/api/v1/console/meters/${enc}/series?points=${PHASES.join(",")}&buckets=${CHART_W}${q}`),
      api(`/api/v1/meters/${enc}/intervals?from=${encodeURIComponent(from)}`),
      api(`/api/v1/events?meter=${enc}`),
      latest.billing ? api(`/api/v1/meters/${enc}/settlements`) : Promise.resolve(null)]);
    document.getElementById("curve-title").textContent = days === 1 ? t("meter.curve") : t("meter.curve_days", { days: days });
    drawSeries(document.getElementById("curve"), series, PHASES, t("meter.curve"));
    drawBars(document.getElementById("bars"), intervals);
    eventsTable(document.querySelector("#meter-events tbody"), events.events);
    document.getElementById("meter-cycle").textContent = stages ? stages.cycle : "—";
    stagesTable(document.querySelector("#stages tbody"), stages);
  } catch (e) {
    err.textContent = e.message;
  }
}

/* ---------------------------------------------------------------- customer page */

async function showCustomer(id) {
  show("customer-page");
  document.getElementById("customer-id").textContent = id;
  const err = document.getElementById("customer-error");
  err.textContent = "";
  const enc = encodeURIComponent(id);
  const every = (await api("/api/v1/meters")).meters;
  const meters = every.filter((m) => m.customer === id);
  const tbody = document.querySelector("#customer-meters tbody");
  tbody.replaceChildren();
  const info = document.getElementById("customer-info");
  const tariffs = document.querySelector("#customer-tariffs tbody");
  tariffs.replaceChildren();
  let doc = null;
  try {
    doc = await api(`/api/v1/customers/${enc}/settlements`);
  } catch (e) {
    err.textContent = e.status === 404 ? t("customer.unavailable") : e.message;
  }
  const roles = {};
  for (const p of (doc && doc.meters) || []) { roles[p.meter] = p; }
  const members = doc && doc.meters ? doc.meters.map((p) => every.find((m) => m.id === p.meter) || { id: p.meter })
    : meters;
  for (const m of members) {
    const a = el("a", { href: "#/meter/" + encodeURIComponent(m.id) }, m.id);
    const r = roles[m.id];
    tbody.appendChild(row([a, r ? tk("role.meter.", r.role) + (r.sign < 0 ? " (−)" : "") : "—", m.bus || "—",
      fmtTime(m.last_good)], { "data-meter": m.id }));
  }
  const cycle = doc ? doc.cycle : null;
  const csv = document.getElementById("customer-csv");
  csv.href = `/api/v1/customers/${enc}/settlements?format=csv${cycle ? "&cycle=" + encodeURIComponent(cycle) : ""}`;
  csv.setAttribute("download", `${id}-${cycle || "cycle"}.csv`);
  const total = (doc && doc.cycle_total) || {};
  const cap = doc ? doc.contract_capacity_kva : null;
  dl(info, [
    ["customer.cycle", cycle || "—"],
    ["customer.max_demand", total.max_demand_kw !== undefined && total.max_demand_kw !== null ? `${total.max_demand_kw} kW` : "—"],
    ["customer.max_demand_at", total.max_demand_at ? fmtTime(total.max_demand_at) : "—"],
    ["customer.contract", cap !== undefined && cap !== null ? `${cap} kVA` : "—"],
    ["customer.demand_ratio", cap && total.max_demand_kw ? fmtRate(Number(total.max_demand_kw) / Number(cap)) : "—"],
    ["customer.pf", total.power_factor !== undefined && total.power_factor !== null ? fmtNum(total.power_factor) : "—"],
  ]);
  const stages = (doc && doc.stages) || [];
  for (const st of [...stages, ...(doc && doc.cycle_total ? [doc.cycle_total] : [])]) {
    const label = st.stage === "total" ? t("customer.cycle_total") : st.stage;
    const cons = Object.entries(st.consumption || {});
    // a stage without consumption yet (an end not settled) still shows its quality and status
    for (const [reg, v] of cons.length ? cons : [["—", null]]) {
      tariffs.appendChild(row([label, reg, fmtNum(v), tk("sq.", st.quality),
        st.complete ? t("stage.complete") : t("stage.incomplete")], { "data-stage": String(st.stage) }));
    }
  }
  if (!tariffs.children.length) { tariffs.appendChild(el("tr")).appendChild(el("td", { colspan: 5 }, t("stage.none"))); }
}

/* ---------------------------------------------------------------- worklist */

async function showWorklist() {
  show("worklist-page");
  const err = document.getElementById("worklist-error");
  err.textContent = "";
  const list = document.getElementById("worklist");
  let doc;
  try {
    doc = await api("/api/v1/events?state=open,acknowledged&since=" +
      encodeURIComponent(new Date(Date.now() - 365 * 86400000).toISOString()));
  } catch (e) { err.textContent = e.message; return; }
  list.replaceChildren();
  if (!doc.events.length) { list.appendChild(el("p", { class: "nodata" }, t("worklist.empty"))); }
  for (const e of doc.events) {
    const w = e.worklist || { state: "open" };
    const card = el("article", { class: "event", "data-event": String(e.id), "data-state": w.state });
    const h = el("h3");
    h.appendChild(el("span", { class: "sev sev-" + e.severity }, tk("severity.", e.severity)));
    h.appendChild(document.createTextNode(" " + tk("event.", e.type) + " — "));
    h.appendChild(el("a", { href: "#/meter/" + encodeURIComponent(e.meter) }, e.meter));
    card.appendChild(h);
    card.appendChild(el("p", {}, e.message));
    const facts = el("dl");
    const items = [["worklist.raised", fmtTime(e.ts)], ["worklist.state", tk("state.", w.state)]];
    if (w.acknowledged_by) { items.push(["worklist.acknowledged_by", `${w.acknowledged_by} (${fmtTime(w.acknowledged_at)})`]); }
    if (w.note) { items.push(["worklist.note", w.note]); }
    dl(facts, items);
    const ev = el("dl", { class: "evidence" });
    for (const [k, v] of Object.entries(e.evidence || {})) {
      ev.appendChild(el("dt", {}, k)); ev.appendChild(el("dd", {}, typeof v === "object" ? JSON.stringify(v) : v));
    }
    const cols = el("div", { class: "cols" });
    const left = el("div");
    left.appendChild(facts);
    left.appendChild(el("h4", {}, t("worklist.evidence")));
    left.appendChild(ev);
    const chart = el("div", { class: "chart small" });
    cols.appendChild(left); cols.appendChild(chart);
    card.appendChild(cols);
    if (canWrite()) {
      const form = el("div", { class: "actions" });
      const note = el("input", { type: "text", class: "note", placeholder: t("worklist.note_placeholder") });
      const ack = el("button", { type: "button", class: "ack" }, t("worklist.ack"));
      const close = el("button", { type: "button", class: "close" }, t("worklist.close"));
      ack.disabled = w.state !== "open";
      ack.addEventListener("click", () => act(e.id, "ack", { note: note.value }));
      close.addEventListener("click", () => {
        if (!note.value.trim()) { err.textContent = t("worklist.reason_needed"); note.focus(); return; }
        act(e.id, "close", { reason: note.value });
      });
      form.append(note, ack, close);
      card.appendChild(form);
    }
    list.appendChild(card);
    if (!e.meter.startsWith("bus:")) { eventChart(chart, e); }
  }
}

async function eventChart(container, e) {
  /* the meter's power over six hours either side of the event, the event's time marked */
  const at = Date.parse(e.ts);
  const from = new Date(at - 6 * 3600000).toISOString(), to = new Date(at + 6 * 3600000).toISOString();
  try {
    const s = await api(`/api/v1/console/meters/${encodeURIComponent(e.meter)}/series?points=power_kw&buckets=240` +
      `&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    drawSeries(container, s, ["power_kw"], t("worklist.chart"));
    const svg = container.querySelector("svg");
    const xm = 50 + ((at - Date.parse(s.from)) / (Date.parse(s.to) - Date.parse(s.from))) * (CHART_W - 60);
    svg.appendChild(svgEl("line", { class: "marker", x1: xm.toFixed(1), y1: 10, x2: xm.toFixed(1), y2: 230 }));
  } catch (err) { container.textContent = err.message; }
}

async function act(id, action, body) {
  const err = document.getElementById("worklist-error");
  err.textContent = "";
  try {
    await api(`/api/v1/events/${id}/${action}`, { method: "POST", body: JSON.stringify(body) });
    await showWorklist();
    document.getElementById("worklist-status").textContent = t(action === "ack" ? "worklist.acked" : "worklist.closed", { id: id });
  } catch (e) { err.textContent = e.message; }
}

/* ---------------------------------------------------------------- KPIs */

const KPI_RATIOS = ["read_completeness", "on_time_rate", "interval_completeness", "settlement_completeness"];
const KPI_COUNTS = { read_completeness: ["slots_read_good", "slots_scheduled"], on_time_rate: ["settlements_on_time", "settlements_due"],
  interval_completeness: ["intervals_complete", "intervals_expected"], settlement_completeness: ["settlements_captured", "settlements_due"] };

function sumRows(rows, key) {
  /* per key, sums of the counts of every row; ratios recomputed from the sums (never averaged) */
  const out = {};
  for (const r of rows) {
    const o = out[r[key]] = out[r[key]] || { id: r[key] };
    for (const [num, den] of Object.values(KPI_COUNTS)) {
      for (const c of [num, den]) { if (r[c] !== undefined) { o[c] = (o[c] || 0) + r[c]; } }
    }
  }
  for (const o of Object.values(out)) {
    for (const [k, [num, den]] of Object.entries(KPI_COUNTS)) {
      o[k] = o[num] === undefined || !o[den] ? null : o[num] / o[den];
    }
  }
  return Object.values(out).sort((a, b) => String(a.id).localeCompare(String(b.id)));
}

function kpiTable(table, rows) {
  const head = el("thead");
  const tr = head.appendChild(el("tr"));
  for (const label of [t("kpi.scope"), t("kpi.read_completeness"), t("kpi.on_time_rate"),
    t("kpi.interval_completeness"), t("kpi.settlement_completeness")]) { tr.appendChild(el("th", {}, label)); }
  const tbody = el("tbody");
  table.replaceChildren(head, tbody);
  for (const r of rows) { tbody.appendChild(row([r.id || "—", ...KPI_RATIOS.map((k) => fmtRate(r[k]))], { "data-id": String(r.id) })); }
  if (!rows.length) { tbody.appendChild(el("tr")).appendChild(el("td", { colspan: 5 }, t("meter.no_data"))); }
}

async function showKpi() {
  show("kpi-page");
  const err = document.getElementById("kpi-error");
  err.textContent = "";
  try {
    const today = await api("/api/v1/kpi");
    document.getElementById("kpi-date").textContent = today.date;
    kpiTable(document.getElementById("kpi-today-bus"), sumRows(today.meters, "bus"));
    // customers as the customers section defines them (every meter of the customer, any role)
    const customerRows = (d) => (d.customers || d.meters);
    kpiTable(document.getElementById("kpi-today-customer"), sumRows(customerRows(today), "customer"));
    // this cycle: the days from the cycle's start (a billing meter's cycle; else the month) to today
    let start = today.date.slice(0, 8) + "01";
    const billed = state.meters.find((m) => m.billing) || (await api("/api/v1/meters")).meters.find((m) => m.billing);
    if (billed) {
      const cyc = await api(`/api/v1/meters/${encodeURIComponent(billed.id)}/settlements`);
      start = new Date(Date.parse(cyc.start)).toLocaleDateString("sv-SE", { timeZone: cyc.timezone });
      document.getElementById("kpi-cycle").textContent = cyc.cycle;
    } else {
      document.getElementById("kpi-cycle").textContent = today.date.slice(0, 7);
    }
    const days = [];
    for (let d = new Date(start + "T12:00:00Z"); d.toISOString().slice(0, 10) < today.date && days.length < 31;
      d = new Date(d.getTime() + 86400000)) { days.push(d.toISOString().slice(0, 10)); }
    const docs = [today, ...(await Promise.all(days.map((d) => api("/api/v1/kpi?date=" + d))))];
    const all = docs.flatMap((d) => d.meters);
    kpiTable(document.getElementById("kpi-cycle-bus"), sumRows(all, "bus"));
    kpiTable(document.getElementById("kpi-cycle-customer"), sumRows(docs.flatMap(customerRows), "customer"));
  } catch (e) { err.textContent = e.message; }
}

/* ---------------------------------------------------------------- routing */

function route() {
  if (!state.role) { show("signin-page"); return; }
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  const h = location.hash;
  let m = h.match(/^#\/meter\/(.+)$/);
  if (m) { showMeter(decodeURIComponent(m[1])); return; }
  m = h.match(/^#\/customer\/(.+)$/);
  if (m) { showCustomer(decodeURIComponent(m[1])); return; }
  if (h === "#/worklist") { showWorklist(); return; }
  if (h === "#/kpi") { showKpi(); return; }
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
  document.getElementById("range").addEventListener("change", (ev) => { state.rangeDays = Number(ev.target.value); route(); });
  for (const th of document.querySelectorAll("#meters th[data-sort]")) {
    th.addEventListener("click", () => {
      if (state.sortKey === th.dataset.sort) { state.sortDir = -state.sortDir; } else {
        state.sortKey = th.dataset.sort; state.sortDir = 1;
      }
      state.page = 0;           // a new order starts at its first page
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
