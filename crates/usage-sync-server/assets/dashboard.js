// The live dashboard: polls GET /admin/v1/status every second, turns its
// cumulative counters into rates, and draws them with uPlot (vendored; the
// page loads nothing from outside the service). It reads its data from
// /dashboard/data/..., authorised by the HttpOnly cookie the service set
// when the page was opened with ?token= (the script never sees the token).
"use strict";
const WINDOW = 300; // points kept (5 minutes at 1 s)
const triggers = ["threshold", "check", "heartbeat", "session_end", "guarantee", "shutdown", "manual", "recovery"];
const results = ["allowed", "denied", "deduplicated"];

// Colours that mean something: allowed green, denied red; the rest from a
// palette that avoids both.
const COLOURS = { allowed: "#2e8b57", denied: "#c0392b", deduplicated: "#7f8c8d" };
const PALETTE = ["#2b7bba", "#8e44ad", "#d68910", "#16a085", "#5d6d7e", "#a04000", "#1f618d", "#7d3c98"];

function makeChart(id, names) {
  const el = document.getElementById(id);
  const opts = {
    width: Math.max(360, el.clientWidth || 400), height: 180,
    series: [{
      label: "time",
      value: (u, v) => {
        const d = u.data[0];
        const last = v ?? (d && d.length ? d[d.length - 1] : null);
        return last == null ? "" : new Date(last * 1000).toLocaleTimeString();
      },
    }].concat(names.map((n, i) => ({
      label: n,
      stroke: COLOURS[n] || PALETTE[i % PALETTE.length],
      width: 1.5,
      // The legend shows the newest value, not "--" when the cursor is
      // not over the chart.
      value: (u, v) => {
        const d = u.data[i + 1];
        const last = v ?? (d && d.length ? d[d.length - 1] : null);
        return last == null ? "" : (Math.round(last * 10) / 10).toString();
      },
    }))),
    // Rates and counts start at 0: an axis from the smallest value up
    // makes a flat line look like a cliff.
    scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    // Wide enough for "10,000" and more.
    axes: [{}, { size: 64 }],
  };
  const data = [[]].concat(names.map(() => []));
  return { plot: new uPlot(opts, data, el), data };
}

const charts = {
  consumes: makeChart("chart-consumes", results),
  flushes: makeChart("chart-flushes", triggers),
  latency: makeChart("chart-latency", ["avg flush ms"]),
  pending: makeChart("chart-pending", ["pending units", "error rate %"]),
};
// Exposed for the browser test: how many points each chart holds.
window.dashboard = { charts, polls: 0, lastError: null };

function push(chart, t, values) {
  chart.data[0].push(t);
  values.forEach((v, i) => chart.data[i + 1].push(v));
  if (chart.data[0].length > WINDOW) chart.data.forEach(s => s.shift());
  chart.plot.setData(chart.data);
}

let prev = null;
async function poll() {
  try {
    const r = await fetch("/dashboard/data/status");
    if (!r.ok) throw new Error("status " + r.status + ": " + (await r.text()));
    const s = await r.json();
    const t = Date.now() / 1000;
    if (prev) {
      const dt = Math.max(t - prev.t, 0.001);
      push(charts.consumes, t, results.map(k => (s.consumes[k] - prev.s.consumes[k]) / dt));
      push(charts.flushes, t, triggers.map(k => ((s.sync.by_trigger[k] || {}).flushes - ((prev.s.sync.by_trigger[k] || {}).flushes || 0)) / dt || 0));
      push(charts.latency, t, [s.sync.avg_flush_ms]);
      push(charts.pending, t, [s.pending_units, s.sync.error_rate * 100]);
    }
    prev = { t, s };
    render(s);
    window.dashboard.polls++;
    window.dashboard.lastError = null;
  } catch (e) {
    window.dashboard.lastError = String(e);
    document.getElementById("banner").textContent = "cannot read status: " + e;
    document.getElementById("banner").className = "firing";
  }
}

function render(s) {
  const banner = document.getElementById("banner");
  if (s.alerts && s.alerts.length) {
    banner.className = "firing";
    banner.textContent = "Firing: " + s.alerts.map(a => a.alert + (a.action ? " → " + a.action : "")).join(", ");
  } else {
    banner.className = "";
    banner.textContent = "No alerts firing";
  }
  document.getElementById("summary").innerHTML =
    `<span>profile <b>${s.profile}</b></span><span>durability <b>${s.durability}</b></span>` +
    `<span>sharing <b>${s.sharing.mode}</b>${s.sharing.degraded ? " (degraded)" : ""}</span>` +
    `<span>users tracked <b>${s.users_tracked}</b></span><span>pending <b>${s.pending_units}</b></span>` +
    `<span>flushes <b>${s.sync.flushes}</b></span><span>uptime <b>${Math.round(s.uptime_seconds)} s</b></span>`;
  const body = document.querySelector("#top tbody");
  body.innerHTML = "";
  for (const u of s.top_pending_users) {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = u.user_id;
    const b = document.createElement("td"); b.textContent = u.pending;
    tr.append(a, b); body.append(tr);
  }
}

document.getElementById("lookup").addEventListener("submit", async ev => {
  ev.preventDefault();
  const id = document.getElementById("user").value.trim();
  const out = document.getElementById("diagnose");
  if (!id) return;
  const r = await fetch("/dashboard/data/users/" + encodeURIComponent(id) + "/diagnose");
  out.textContent = JSON.stringify(await r.json(), null, 2);
  out.dataset.status = r.status;
});

poll();
setInterval(poll, 1000);
