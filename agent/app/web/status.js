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

function showLoad(t) {
  const ceiling = t.site_ceiling_kw;
  const top = Math.max(t.site_kw, t.planned_kw, ceiling ?? 0, 1) * 1.1;
  const bar = $("load-bar");
  bar.style.width = `${(100 * t.site_kw) / top}%`;
  bar.classList.toggle("over", ceiling !== null && t.site_kw > ceiling * 1.005);
  const mark = $("ceiling-mark");
  mark.style.display = ceiling === null ? "none" : "block";
  if (ceiling !== null) mark.style.left = `${(100 * ceiling) / top}%`;
  $("load-line").textContent = `site ${kw(t.site_kw)} kW on the ${t.evidence}, ${kw(t.planned_kw)} kW planned, ` +
    (ceiling === null ? "no ceiling" : `ceiling ${kw(ceiling)} kW`) +
    (t.meter_alarm ? `; ALARM: ${t.meter_alarm}` : "");
  const price = t.price_usd_per_mwh === null ? "no price yet" : `price $${kw(t.price_usd_per_mwh)}/MWh`;
  $("price-line").textContent = t.price_stale ? `${price} (STALE)` : price;
  $("price-line").className = t.price_stale ? "stale" : "";
  const grid = t.grid_emergency === "normal" ? "grid normal" : `grid ${t.grid_emergency.toUpperCase()}`;
  $("posture-line").textContent = `${grid}; 4CP warning ${t.fourcp_warning ? "in force" : "none"}; ` +
    `devices ${t.devices_available}/${t.devices_total} available`;
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
  rows("classes", Object.entries(t.class_kw), ([name, value]) => [[name], [kw(value), "num"]]);
  rows("events", doc.events, (e) => {
    const c = e.compliance;
    const record = c ? `${c.compliant_cycles}/${c.cycles} cycles compliant, worst ${kw(c.worst_over_kw)} kW over` : "not judged yet";
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
