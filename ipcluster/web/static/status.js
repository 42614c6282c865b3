"use strict";
const STATES = ["alive", "busy", "registering", "dead"];
const REFRESH = (() => {
  const v = Number(new URLSearchParams(location.search).get("refresh"));
  return v >= 200 && v <= 60000 ? v : 1000;
})();
let updates = 0;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}
function dur(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " m";
}
function ms(s) {
  if (s === null || s === undefined) return "\u2014";
  const v = s * 1000;
  return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms";
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], {hour12: false}); }
function badge(state) {
  return el("span", {class: "state " + (STATES.includes(state) ? state : "other")}, state);
}
function fill(id, rows, columns, empty) {
  const body = document.getElementById(id);
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: columns}, empty))]));
}
function supervision(e, now) {
  // The controller's own engines: restarts, the next one, or why it stays down.
  if (!e.supervisor) return "";
  const parts = [e.restarts + (e.restarts === 1 ? " restart" : " restarts")];
  if (e.supervisor === "backing off" && e.next_restart_at) parts.push("back in " + dur(Math.max(0, e.next_restart_at - now)));
  else if (e.supervisor === "given up") parts.push("gave up");
  else if (e.supervisor !== "running") parts.push(e.supervisor);
  return parts.join(" \u00b7 ");
}
function text(id, value) { document.getElementById(id).textContent = value; }

function render(s) {
  const c = s.controller;
  text("meta", "controller pid " + c.pid + (c.ip ? " on " + c.ip : "") +
       (c.heartbeat_period ? " \u00b7 heartbeat " + c.heartbeat_period + " s" : ""));
  const counts = s.counts;
  text("engines-total", s.engines.length);
  document.getElementById("engine-counts").replaceChildren(
    ...STATES.map(st => el("span", {class: "state " + st, data: {count: st}}, counts[st] + " " + st)));
  const t = s.tasks;
  text("tasks-in-flight", t.in_flight);
  text("tasks-retried", t.retried ? t.retried + " retried after an engine died" : "errors, dead engines");
  text("tasks-on-engines", t.queued_on_engines + " queued on engines");
  text("tasks-queued", t.ready + t.waiting);
  text("tasks-waiting", t.ready + " ready · " + t.waiting + " waiting");
  text("tasks-completed", t.completed);
  text("tasks-failed", t.failed);
  document.getElementById("tasks-failed").classList.toggle("nonzero", t.failed > 0);
  text("tasks-rate", t.per_second.toFixed(t.per_second < 10 ? 2 : 1));
  text("rate-window", "over the last " + t.rate_window + " s");

  fill("engine-rows", s.engines.map(e => el("tr", {class: "state-" + e.state, data: {engineId: e.id, state: e.state}},
    el("td", {class: "id"}, e.id),
    el("td", {}, e.host),
    el("td", {class: "num"}, e.pid),
    el("td", {class: "state-cell"}, badge(e.state)),
    el("td", {class: "num"}, e.state === "dead" ? "\u2014" : ms(e.rtt)),
    el("td", {class: "task", title: e.running_task || ""}, e.running_task || ""),
    el("td", {class: "num"}, dur(e.task_running_for)),
    el("td", {class: "num"}, dur(e.busy_for)),
    el("td", {class: "num"}, e.state === "dead" ? "" : e.queued),
    el("td", {class: "num"}, usageOf(e.id, "rss", v => (v / 1e6).toFixed(0) + " MB")),
    el("td", {class: "num"}, usageOf(e.id, "cpu", v => v.toFixed(0) + " %")),
    el("td", {class: "supervision", title: e.last_exit || ""}, supervision(e, s.time)))), 12,
    "No engines have registered yet.");

  fill("failure-rows", s.failures.map(f => el("tr", {data: {failedEngine: f.engine, event: f.event}},
    el("td", {}, clock(f.time)),
    el("td", {class: "id"}, f.engine),
    el("td", {}, f.host + " / " + f.pid),
    el("td", {}, badge(f.event === "dead" ? "dead" : f.event)),
    el("td", {class: "reason"}, f.reason))), 5, "No engine has died.");

  text("drops-window", "recent = last " + s.drops_window + " s");
  fill("drop-rows", s.drops.map(d => el("tr", {data: {socket: d.socket}},
    el("td", {}, d.socket),
    el("td", {class: "reason"}, d.reason),
    el("td", {class: "num"}, d.recent),
    el("td", {class: "num"}, d.total))), 4, "No message has been dropped.");

  updates += 1;
  document.documentElement.dataset.updates = updates;
  text("updated", "updated " + clock(s.time));
}

function connection(ok, why) {
  const node = document.getElementById("conn");
  node.className = "conn " + (ok ? "ok" : "lost");
  node.textContent = ok ? (streaming ? "live" : "live (polling)") : "no answer from the controller (" + why + ")";
  document.documentElement.dataset.connection = ok ? "ok" : "lost";
}

// -- charts (Chart.js, served by the controller as chart.js) ----------------------------
const OUTCOMES = {ok: "#2da44e", failed: "#cf222e", retried: "#d4a72c", cancelled: "#8c959f"};
const PALETTE = ["#0969da", "#8250df", "#1a7f37", "#bf3989", "#9a6700", "#cf222e", "#1b7c83", "#57606a"];
const STREAM_WINDOW = 60, SERIES_WINDOW = 300, KEEP_RUNS = 5000;
const history = {samples: [], runs: []};
let latest = {engines: {}};
let streaming = false;
let charts = null;
let pending = false;
const drawn = {stream: 0, rate: 0, rss: 0, cpu: 0};

function usageOf(id, key, show) {
  const u = latest.engines[id];
  return u && u[key] !== null && u[key] !== undefined ? show(u[key]) : "";
}
function colour(i) { return PALETTE[i % PALETTE.length]; }
function counted(name) {
  return {id: "counted-" + name, afterDraw: () => {
    drawn[name] += 1;
    document.documentElement.dataset["drawn" + name[0].toUpperCase() + name.slice(1)] = drawn[name];
  }};
}
function timeAxis(window) {
  return {type: "linear", min: 0, max: window, grid: {color: "#eef0f3"},
          ticks: {maxTicksLimit: 7, callback: v => clock(v)}};
}
function lineChart(id, name, yTitle) {
  return new Chart(document.getElementById(id), {
    type: "line", data: {datasets: []}, plugins: [counted(name)],
    options: {animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
      elements: {point: {radius: 0}, line: {borderWidth: 1.6, tension: 0.2}},
      interaction: {mode: "nearest", axis: "x", intersect: false},
      plugins: {legend: {position: "bottom", labels: {boxWidth: 10, font: {size: 11}}}},
      scales: {x: timeAxis(SERIES_WINDOW), y: {beginAtZero: true, title: {display: !!yTitle, text: yTitle}}}}});
}
function setupCharts() {
  if (typeof Chart === "undefined") return null;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = "#636c76";
  document.getElementById("stream-window").textContent = STREAM_WINDOW;
  document.getElementById("stream-legend").replaceChildren(
    ...Object.keys(OUTCOMES).map(o => el("span", {class: o}, o)));
  const stream = new Chart(document.getElementById("chart-stream"), {
    type: "bar", plugins: [counted("stream")],
    data: {labels: [], datasets: Object.entries(OUTCOMES).map(([outcome, c]) => (
      {label: outcome, data: [], backgroundColor: c, borderWidth: 0, minBarLength: 2, grouped: false,
       barPercentage: 0.8, categoryPercentage: 1.0}))},
    options: {indexAxis: "y", animation: false, maintainAspectRatio: false,
      plugins: {legend: {display: false}, tooltip: {callbacks: {
        label: ctx => { const r = ctx.raw.run; return r.task + (r.name ? " " + r.name : "") + ": " + r.outcome +
                        ", " + dur(r.end - r.start); }}}},
      scales: {x: timeAxis(STREAM_WINDOW), y: {type: "category", grid: {display: false}}}}});
  const rate = lineChart("chart-rate", "rate", "");
  rate.data.datasets = [
    {label: "tasks / s", data: [], borderColor: "#0969da", backgroundColor: "#0969da33", fill: true},
    {label: "queued", data: [], borderColor: "#9a6700", backgroundColor: "#9a6700", yAxisID: "y2"}];
  rate.options.scales.y2 = {beginAtZero: true, position: "right", grid: {display: false}};
  return {stream, rate, rss: lineChart("chart-rss", "rss", ""), cpu: lineChart("chart-cpu", "cpu", "")};
}
function engineLines(chart, engines, key, scale) {
  chart.data.datasets = engines.map((id, i) => ({
    label: id, borderColor: colour(i), backgroundColor: colour(i),
    data: history.samples.filter(s => s.engines[id] && s.engines[id][key] !== null && s.engines[id][key] !== undefined)
      .map(s => ({x: s.time, y: s.engines[id][key] * scale}))}));
}
function redraw() {
  pending = false;
  if (!charts) return;
  const now = latest.time || Date.now() / 1000;
  const lanes = [...new Set([...(latest.lanes || []), ...history.runs.map(r => r.engine)])].sort(naturally);
  const stream = charts.stream;
  stream.data.labels = lanes;
  document.getElementById("stream-box").style.height = Math.max(110, 34 + 26 * lanes.length) + "px";
  const shown = history.runs.filter(r => r.end >= now - STREAM_WINDOW);
  stream.data.datasets.forEach(ds => {
    ds.data = shown.filter(r => r.outcome === ds.label).map(r => ({y: r.engine, x: [r.start, r.end], run: r}));
  });
  Object.assign(stream.options.scales.x, {min: now - STREAM_WINDOW, max: now});
  stream.update("none");
  document.documentElement.dataset.streamBars = shown.length;

  const samples = history.samples;
  charts.rate.data.datasets[0].data = samples.filter(s => s.per_second !== null).map(s => ({x: s.time, y: s.per_second}));
  charts.rate.data.datasets[1].data = samples.map(s => ({x: s.time, y: s.queued}));
  const engines = [...new Set(samples.flatMap(s => Object.keys(s.engines)))].sort(naturally);
  engineLines(charts.rss, engines, "rss", 1e-6);
  engineLines(charts.cpu, engines, "cpu", 1);
  // The last five minutes, or since the page has data (at least a minute).
  const since = Math.max(now - SERIES_WINDOW, Math.min(now - 60, samples.length ? samples[0].time : now));
  for (const chart of [charts.rate, charts.rss, charts.cpu]) {
    Object.assign(chart.options.scales.x, {min: since, max: now});
    chart.update("none");
  }
}
function schedule() {
  if (!pending) { pending = true; requestAnimationFrame(redraw); }
}
function naturally(a, b) { return a.localeCompare(b, undefined, {numeric: true}); }
function addRuns(runs) {
  history.runs.push(...runs);
  const horizon = (latest.time || 0) - SERIES_WINDOW;
  if (history.runs.length > KEEP_RUNS || (history.runs.length && history.runs[0].end < horizon)) {
    history.runs = history.runs.filter(r => r.end >= horizon).slice(-KEEP_RUNS);
  }
}
function addSample(sample) {
  history.samples.push(sample);
  while (history.samples.length && history.samples[0].time < sample.time - SERIES_WINDOW) history.samples.shift();
  latest = Object.assign({}, latest, {engines: sample.engines});
}
function show(status) {
  latest = Object.assign({}, latest, {time: status.time, lanes: status.engines.filter(e => e.state !== "dead").map(e => e.id)});
  render(status);
}

// -- live updates: server-sent events, or polling where the controller refuses a stream ----------
function listen() {
  const source = new EventSource("events");
  source.addEventListener("hello", ev => {
    const hello = JSON.parse(ev.data);
    streaming = true;
    history.samples = [];
    history.runs = [];
    hello.samples.forEach(addSample);
    addRuns(hello.runs);
    show(hello.status);
    connection(true);
    schedule();
  });
  source.addEventListener("tick", ev => {
    const tick = JSON.parse(ev.data);
    addSample(tick.sample);
    show(tick.status);
    connection(true);
    schedule();
  });
  source.addEventListener("runs", ev => {
    addRuns(JSON.parse(ev.data));
    schedule();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {  // refused (too many streams): poll instead
      streaming = false;
      poll();
    } else {
      connection(false, "reconnecting");
    }
  };
}

async function poll() {
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    const t = status.tasks;
    addSample({time: status.time, per_second: t.per_second, queued: t.ready + t.waiting, in_flight: t.in_flight,
               engines: latest.engines});
    show(status);
    connection(true);
    schedule();
  } catch (e) {
    connection(false, e.message || String(e));
  } finally {
    setTimeout(poll, REFRESH);
  }
}

charts = setupCharts();
if (typeof EventSource !== "undefined" && !new URLSearchParams(location.search).has("poll")) listen();
else poll();
