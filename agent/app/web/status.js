// The status page: asks /status.json every 2 s and shows it. Every value goes in as text.
"use strict";

const EVERY_MS = 2000;
const $ = (id) => document.getElementById(id);
const kw = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: 1 }));

function rows(table, items, cells) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

// a round scale top and its ticks: 3 to 5 steps of 1, 2, 2.5 or 5 times a power of ten
function scale(maxKw) {
  const raw = Math.max(maxKw, 1) / 5;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((v) => v >= raw);
  const top = Math.ceil(Math.max(maxKw, 1) / step) * step;
  const ticks = [];
  for (let v = 0; v <= top + 1e-9; v += step) ticks.push(v);
  return { top, ticks };
}

function until(at) {
  return at ? ` until ${new Date(at).toLocaleTimeString()}` : "";
}

function showLoad(t) {
  const ceiling = t.site_ceiling_kw;
  const limit = t.import_limit_kw;
  // the site's own scale: every device at its rating, the import limit, the ceiling
  const { top, ticks } = scale(Math.max(t.capacity_kw || 0, limit ?? 0, ceiling ?? 0, t.site_kw, t.planned_kw));
  const bar = $("load-bar");
  bar.style.width = `${(100 * t.site_kw) / top}%`;
  bar.classList.toggle("over", ceiling !== null && t.site_kw > ceiling * 1.005);
  for (const [id, value] of [["ceiling-mark", ceiling], ["limit-mark", limit]]) {
    $(id).style.display = value === null || value === undefined ? "none" : "block";
    if (value !== null && value !== undefined) $(id).style.left = `${(100 * value) / top}%`;
  }
  $("axis").replaceChildren(...ticks.map((v) => {
    const span = document.createElement("span");
    span.style.left = `${(100 * v) / top}%`;
    span.textContent = `${kw(v)} kW`;
    return span;
  }));
  const share = limit ? `, ${Math.round((100 * t.site_kw) / limit)} % of the ${kw(limit)} kW import limit` : "";
  $("load-line").textContent = `site ${kw(t.site_kw)} kW on the ${t.evidence}${share}; ${kw(t.planned_kw)} kW planned; ` +
    (ceiling === null ? "no ceiling" : `ceiling ${kw(ceiling)} kW`) + `; ${kw(t.capacity_kw)} kW with every device at its rating` +
    (t.meter_alarm ? `; ALARM: ${t.meter_alarm}` : "");
  const price = t.price_usd_per_mwh === null ? "no price yet" : `price $${kw(t.price_usd_per_mwh)}/MWh`;
  $("price-line").textContent = t.price_stale ? `${price} (STALE)` : price;
  $("price-line").className = t.price_stale ? "stale" : "";
  const grid = $("grid-posture");
  grid.textContent = t.grid_emergency === "normal" ? "grid normal" : `grid ${t.grid_emergency.toUpperCase()}${until(t.grid_emergency_expires_at)}`;
  grid.className = `posture posture-${t.grid_emergency}`;
  const fourcp = $("fourcp-posture");
  fourcp.textContent = t.fourcp_warning ? `4CP warning${until(t.fourcp_warning_expires_at)}` : "no 4CP warning";
  fourcp.className = t.fourcp_warning ? "posture posture-4cp" : "posture posture-normal";
  const states = t.device_states || {};
  const named = { ok: "ok", not_obeying: "not obeying", unavailable: "down", suspect: "reading not believed",
    implausible: "reading implausible", no_driver: "without a driver" };
  const parts = Object.entries(states).filter(([s, n]) => n > 0 || s === "ok").map(([s, n]) => `${n} ${named[s] || s}`);
  $("counts-line").textContent = `devices: ${parts.join(", ")} (of ${t.devices_total})`;
  rows("alarms", t.alarms || [], (a) => [[a.kind.replaceAll("_", " "), "alarm"], [a.subject], [a.detail],
    [new Date(a.since).toLocaleString()]]);
  if (!(t.alarms || []).length) rows("alarms", [0], () => [["no alarms"], [""], [""], [""]]);
  rows("overrides", t.overrides || [], (o) => [[o.override_id], [o.target], [o.limit ? `${o.action} ${o.limit}` : o.action],
    [o.issued_by], [new Date(o.expires_at).toLocaleString()]]);
  if (!(t.overrides || []).length) rows("overrides", [0], () => [["none in force"], [""], [""], [""], [""]]);
}

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#6d4c41", "#00838f", "#ef6c00", "#5e35b1", "#9e9d24", "#ad1457"];

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// one line per series, broken where a value is missing; x: the last 24 h, y: 0 .. top
function chart(svg, height, rowsIn, series, top, unit, lines) {
  const W = 960, L = 64, R = 10, T = 10, B = 22;
  const now = Date.now(), from = now - 24 * 3600e3;
  const x = (at) => L + ((Date.parse(at) - from) / (now - from)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (height - T - B);
  const kids = [];
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    kids.push(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    kids.push(svgEl("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, `${kw(v)} ${unit}`));
  }
  for (let h = 0; h <= 24; h += 6) {
    const at = new Date(from + h * 3600e3);
    kids.push(svgEl("text", { x: L + (h / 24) * (W - L - R), y: height - 6, "text-anchor": "middle" },
      h === 24 ? "now" : at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  for (const [name, cls, colour] of series) {
    let d = "";
    let pen = false;
    for (const r of rowsIn) {
      const v = typeof name === "function" ? name(r) : r[name];
      if (v === null || v === undefined) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(r.at).toFixed(1)},${y(Math.min(v, top)).toFixed(1)} `;
      pen = true;
    }
    if (d) kids.push(svgEl("path", { d, class: cls, ...(colour ? { stroke: colour } : {}), "data-series": String(cls) }));
  }
  for (const [value, cls] of lines) {
    if (value !== null && value !== undefined) kids.push(svgEl("line", { class: cls, x1: L, x2: W - R, y1: y(value), y2: y(value) }));
  }
  svg.replaceChildren(...kids);
}

let lastTelemetry = null;

async function refreshHistory() {
  try {
    const answer = await fetch("/history.json", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const doc = await answer.json();
    const r = doc.rows;
    const t = lastTelemetry || {};
    const classes = [...new Set(r.flatMap((row) => Object.keys(row.class_kw)))];
    const peak = Math.max(1, t.capacity_kw || 0, t.import_limit_kw || 0, ...r.map((row) => Math.max(row.site_kw, row.ceiling_kw ?? 0)));
    const { top } = scale(peak);
    chart($("history"), 260, r, [["site_kw", "site"], ["ceiling_kw", "ceiling"],
      ...classes.map((c, k) => [(row) => row.class_kw[c] ?? null, "class", COLOURS[k % COLOURS.length]])],
      top, "kW", [[t.import_limit_kw, "limit"]]);
    const prices = r.map((row) => row.price_usd_per_mwh).filter((v) => v !== null);
    const { top: priceTop } = scale(Math.max(1, ...prices));
    chart($("price-history"), 120, r, [["price_usd_per_mwh", "price"]], priceTop, "$/MWh", []);
    $("history-line").textContent = r.length
      ? `${r.length} minutes from the service's database: site load (green), ceiling (dashed), import limit (red dotted), ` +
        `planned per class (${classes.map((c, k) => `${c}: ${COLOURS[k % COLOURS.length]}`).join(", ")}); price below`
      : "no history yet (a row is stored each minute)";
  } catch (error) {
    $("history-line").textContent = `history not available (${error.message})`;
  }
}

function show(doc) {
  const t = doc.telemetry;
  if (!t) return;
  $("site").textContent = doc.site;
  const age = Math.max(0, (Date.now() - Date.parse(t.at)) / 1000);
  $("freshness").textContent = `as of ${new Date(t.at).toLocaleTimeString()} (${age.toFixed(0)} s ago)`;
  $("freshness").className = age > 10 ? "stale" : "muted";
  $("mode-line").hidden = t.mode !== "shadow";
  showLoad(t);
  if (lastTelemetry === null) { lastTelemetry = t; refreshHistory(); }
  lastTelemetry = t;
  rows("classes", Object.entries(t.class_kw), ([name, value]) => [[name], [kw(value), "num"]]);
  rows("events", doc.events, (e) => {
    const c = e.compliance;
    const ramp = c && c.ramp_cycles ? ` (${c.ramp_cycles} in its ramp window, not judged)` : "";
    const record = c ? `${c.compliant_cycles}/${c.cycles} cycles compliant after the ramp window${ramp}, worst ${kw(c.worst_over_kw)} kW over` : "not judged yet";
    return [[`${e.event_id} (${e.program || e.source})`], [e.status, `status-${e.status}`],
      [`${e.kind} ${kw(e.requested_kw)} kW`], [kw(e.achieved_kw), "num"], [record], [e.reason]];
  });
  if (doc.events.length === 0) rows("events", [0], () => [["no live events"], [""], [""], [""], [""], [""]]);
  const counts = Object.entries(doc.attention.counts).map(([s, n]) => `${n} ${s.replace("_", " ")}`);
  $("attention-line").textContent = counts.length ? `${counts.join(", ")}: ${doc.attention.ids}` : "every device obeys";
  rows("attention", doc.attention.devices, (d) => [[d.device_id], [d.load_class], [d.state.replace("_", " "), `state-${d.state}`],
    [kw(d.applied_kw), "num"], [kw(d.measured_kw), "num"], [d.why ?? ""]]);
  const pools = doc.gpu_demand || [];
  $("gpu-panel").hidden = pools.length === 0;
  rows("gpu-demand", pools, (p) => {
    const m = p.demand;
    if (!m) return [[p.pool], [p.server], ["–"], ["–"], ["–"], ["–"], [`0/${p.endpoints_total}`, "stale"], ["no answer yet", "stale"]];
    const share = m.kv_cache_usage === null ? "–" : `${Math.round(100 * m.kv_cache_usage)} %`;
    const queue = m.queue_time_s === null ? "–" : m.queue_time_s.toFixed(3);
    return [[p.pool], [p.server], [kw(m.waiting), "num"], [kw(m.running), "num"], [share, "num"], [queue, "num"],
      [`${m.endpoints_up}/${p.endpoints_total}`, m.endpoints_up < p.endpoints_total ? "stale" : ""],
      [m.stale ? `${new Date(m.at).toLocaleTimeString()} (STALE)` : new Date(m.at).toLocaleTimeString(), m.stale ? "stale" : ""]];
  });
  const d = doc.decision;
  $("decision-line").textContent = d ? `decided ${new Date(d.at).toLocaleTimeString()}: ${kw(d.planned_kw)} kW planned, ${d.changed_devices} device(s) changed` : "no decision yet";
  rows("decision", d ? d.groups : [], (g) => [[g.load_class], [g.rule], [String(g.devices), "num"], [kw(g.kw), "num"], [g.reason]]);
}

async function refresh() {
  try {
    const answer = await fetch("/status.json", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    show(await answer.json());
  } catch (error) {
    $("freshness").textContent = `the service does not answer (${error.message})`;
    $("freshness").className = "stale";
  }
}

refresh();
setInterval(refresh, EVERY_MS);
setInterval(refreshHistory, 60000);
