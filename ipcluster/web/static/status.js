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
  if (e.rss) parts.push((e.rss / 1e6).toFixed(0) + " MB");
  if (e.launcher) parts.push(e.launcher);  // a batch system's word: "slurm job 42_3 PENDING (Resources)"
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
    el("td", {class: "supervision", title: e.last_exit || ""}, supervision(e, s.time)))), 10,
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
  node.textContent = ok ? "live" : "no answer from the controller (" + why + ")";
  document.documentElement.dataset.connection = ok ? "ok" : "lost";
}

async function tick() {
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    connection(true);
  } catch (e) {
    connection(false, e.message || String(e));
  } finally {
    setTimeout(tick, REFRESH);
  }
}
tick();
