// /ui/system: this worker's figures of the last minutes, from its own metrics (sampled once a second).
import {$, clear, el, fmtNumber, fmtTime, getJSON, showWorker, sparkline, svg} from "./common.js";

const CHARTS = [
  {key: "events_per_s", title: "Events / s", unit: "ev/s", color: "#4338ca"},
  {key: "p50_ms", title: "Latency p50", unit: "ms", color: "#0891b2", note: "event → recommendation"},
  {key: "p99_ms", title: "Latency p99", unit: "ms", color: "#db2777", note: "event → recommendation"},
  {key: "lag", title: "Consumer lag", unit: "events", color: "#ea580c", digits: 0},
  {key: "batch_mean", title: "Micro-batch size", unit: "per batch", color: "#059669", note: "mean events"},
  {key: "ready", title: "Ready", unit: "", color: "#16a34a", step: true, yMax: 1, digits: 0},
];

function card(chart) {
  const box = el("section", {class: "card chart", id: "chart-" + chart.key},
    el("div", {class: "chart-head"}, el("h2", {text: chart.title}),
      el("span", {class: "chart-value", id: "value-" + chart.key, text: "–"})),
    el("p", {class: "chart-note", text: chart.note || ""}));
  const plot = svg("svg", {class: "spark", id: "svg-" + chart.key, role: "img"});
  box.append(plot, el("div", {class: "chart-axis"}, el("span", {id: "from-" + chart.key}),
    el("span", {id: "max-" + chart.key})));
  return box;
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

function render(data) {
  showWorker(data.url);
  const s = data.series;
  const ready = $("ready");
  ready.textContent = data.ready ? "ready" : "not ready: " + Object.keys(data.missing).join(", ");
  ready.className = "pill " + (data.ready ? "ok" : "bad");
  $("model").textContent = data.model_version ? data.model_version + (data.trained ? "" : " (untrained)") : "none yet";
  $("live-pages").textContent = data.live_pages;
  $("window-note").textContent = "rates and quantiles over " + s.window_s + " s, a point per " + s.interval_s + " s";
  for (const chart of CHARTS) {
    const values = s[chart.key];
    const n = sparkline($("svg-" + chart.key), s.t, values, {color: chart.color, step: chart.step, yMax: chart.yMax ?? null});
    const now = last(values);
    $("value-" + chart.key).textContent = chart.key === "ready" ? (now === null ? "–" : now ? "yes" : "no")
      : fmtNumber(now, chart.digits ?? 1) + (now === null ? "" : " " + chart.unit);
    $("from-" + chart.key).textContent = s.t.length ? "since " + fmtTime(s.t[0]) : "";
    const finite = values.filter(v => v !== null && isFinite(v));
    const clipped = $("svg-" + chart.key).dataset.clipped ? " (clipped)" : "";
    const axis = $("max-" + chart.key);
    axis.textContent = chart.key === "ready" || !finite.length ? (n ? "" : "no points yet")
      : "max " + fmtNumber(Math.max(...finite), chart.digits ?? 0) + clipped;
    axis.title = n + " points, one per " + s.interval_s + " s";
  }
  const models = clear($("models"));
  for (const [since, version] of s.models) {
    models.append(el("li", {}, el("time", {text: fmtTime(since)}), " ", el("code", {text: version || "(none)"})));
  }
}

const charts = $("charts");
for (const chart of CHARTS) charts.append(card(chart));

async function refresh() {
  try {
    render(await getJSON("/ui/api/system"));
  } catch (err) {
    $("ready").textContent = "no answer: " + String(err.message || err);
    $("ready").className = "pill bad";
  }
}

refresh();
setInterval(refresh, 2000);
