// Conveyor's operations dashboard: plain DOM, no build step. Reads the admin API with the pasted
// token and follows run status over /api/ws/workflows (docs/realtime.md); lists are re-read
// every few seconds as well, so runs of users not yet followed still appear.
"use strict";

const TOKEN_KEY = "conveyor.token";
const RUNS_EVERY_MS = 4000;
const OPS_EVERY_MS = 5000;
const SLOW_EVERY_MS = 30000;
const MAX_FOLLOWED_USERS = 100;
const MAX_EVENTS_SHOWN = 500;
const FINAL = new Set(["completed", "failed", "cancelled"]);

const state = {
  token: null,
  runs: new Map(), // id -> run as listed, merged with live status updates
  followedUsers: new Set(),
  selected: null, // run id shown in the detail panel
  lastEventSeq: 0, // of the selected run's event log
  socket: null,
  reconnectDelay: 500,
  timers: [],
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// ---- formatting ----

function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

function seconds(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} m ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} m`;
}

function ago(iso) {
  if (!iso) return "—";
  const ms = Date.now() - Date.parse(iso);
  return ms < 0 ? `in ${seconds(-ms)}` : `${seconds(ms)} ago`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function runDuration(run) {
  const start = Date.parse(run.started_at || run.created_at);
  const end = run.finished_at ? Date.parse(run.finished_at) : Date.now();
  return end - start;
}

function compact(n) {
  return Intl.NumberFormat(undefined, { notation: "compact" }).format(n);
}

function usd(microUsd) {
  return `$${(microUsd / 1e6).toFixed(microUsd < 1e6 ? 4 : 2)}`;
}

// ---- the API ----

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) },
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function showError(error) {
  if (error instanceof ApiError && (error.status === 401 || error.code === "FORBIDDEN")) {
    signOut(`${error.message} Sign in again.`);
    return;
  }
  $("#error").textContent = error ? String(error.message || error) : "";
}

// ---- sign in ----

function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub || null;
  } catch {
    return null;
  }
}

async function signIn(token) {
  state.token = token;
  try {
    await api("/api/admin/run-stats");
  } catch (error) {
    state.token = null;
    const reason = error.code === "FORBIDDEN" ? "This token is not an admin's." : error.message;
    $("#sign-in-error").textContent = reason;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#session").hidden = false;
  $("#whoami").textContent = `admin ${shortId(tokenSubject(token))}`;
  start();
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  if (state.socket) state.socket.close(1000, "signed out");
  state.socket = null;
  state.runs.clear();
  state.followedUsers.clear();
  $("#app").hidden = true;
  $("#session").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
}

function every(ms, fn) {
  fn();
  state.timers.push(setInterval(fn, ms));
}

function start() {
  connect();
  every(RUNS_EVERY_MS, () => refreshRuns().catch(showError));
  every(OPS_EVERY_MS, () => refreshOps().catch(showError));
  every(SLOW_EVERY_MS, () => refreshSlow().catch(showError));
  state.timers.push(setInterval(renderRuns, 1000)); // durations of unfinished runs tick
}

// ---- runs ----

async function refreshRuns() {
  const status = $("#status-filter").value;
  const query = new URLSearchParams({ limit: "50" });
  if (status) query.set("status", status);
  const [page, stats] = await Promise.all([
    api(`/api/admin/runs?${query}`),
    api("/api/admin/run-stats"),
  ]);
  const listed = new Set();
  for (const run of page.runs) {
    listed.add(run.id);
    mergeRun(run, run.last_event_seq);
  }
  // Keep only what the listing shows (it is the newest page under the filter).
  for (const id of state.runs.keys()) if (!listed.has(id)) state.runs.delete(id);
  renderCounts(stats);
  renderRuns();
  followUsers();
}

let refreshPending = null;

function refreshSoon() {
  if (refreshPending) return;
  refreshPending = setTimeout(() => {
    refreshPending = null;
    refreshRuns().catch(showError);
  }, 500);
}

// Apply a listed row or a live update unless it is older than what is shown.
function mergeRun(update, seq) {
  const known = state.runs.get(update.id);
  if (known && seq < known.last_event_seq) return;
  state.runs.set(update.id, { ...(known || {}), ...update, last_event_seq: seq });
}

function applyStatusUpdate(envelope) {
  const data = envelope.data;
  const known = state.runs.get(data.workflow_run_id);
  if (!known) {
    refreshSoon(); // a run this page has not listed yet
    return;
  }
  const update = {
    id: data.workflow_run_id,
    status: data.status,
    progress: data.progress,
    current_step: data.step,
    updated_at: data.updated_at,
    live_status: envelope.snapshot ? known.live_status : data.status,
  };
  if (data.status === "running" && !known.started_at) update.started_at = data.updated_at;
  if (FINAL.has(data.status) && !known.finished_at) update.finished_at = data.updated_at;
  if (data.status === "completed") update.progress = 1;
  if (data.status !== known.status) refreshSoon(); // the counts changed
  mergeRun({ ...known, ...update }, envelope.seq);
  renderRuns();
}

function renderCounts(stats) {
  const tiles = ["queued", "running", "waiting", "completed", "failed", "cancelled"].map((status) => {
    const value = status in stats.unfinished ? stats.unfinished[status] : stats.created[status];
    const note = status in stats.unfinished ? "now" : `last ${stats.hours} h`;
    return el(
      "div",
      { class: `tile ${status}`, "data-status": status },
      el("span", { class: "value" }, String(value)),
      el("span", { class: "label" }, `${status} · ${note}`),
    );
  });
  $("#counts").replaceChildren(...tiles);
}

function renderRuns() {
  const filter = $("#status-filter").value;
  const runs = [...state.runs.values()]
    .filter((run) => !filter || run.status === filter)
    .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  const rows = runs.map((run) => {
    const percent = Math.round((run.progress || 0) * 100);
    const row = el(
      "tr",
      {
        "data-run-id": run.id,
        "data-status": run.status,
        // The last status this row got over the websocket (tests tell live from polled).
        "data-live-status": run.live_status || "",
        class: run.id === state.selected ? "selected" : "",
      },
      el("td", {}, el("span", { class: `pill ${run.status}` }, run.status)),
      el("td", {}, run.workflow_id, run.current_step && !FINAL.has(run.status)
        ? el("span", { class: "muted" }, ` · ${run.current_step}`) : null),
      el("td", { class: "mono", title: run.user_id }, shortId(run.user_id)),
      el("td", {}, el("div", { class: "bar", title: `${percent}%` },
        el("div", { class: `fill ${run.status}`, style: `width:${percent}%` }))),
      el("td", {}, seconds(runDuration(run))),
      el("td", { title: when(run.created_at) }, ago(run.created_at)),
    );
    row.addEventListener("click", () => selectRun(run.id).catch(showError));
    return row;
  });
  $("#runs tbody").replaceChildren(...rows);
  $("#runs-empty").hidden = rows.length > 0;
}

// ---- run detail ----

async function selectRun(id) {
  if (state.selected && state.selected !== id) send({ type: "unsubscribe", topic: `workflow_run:${state.selected}` });
  state.selected = id;
  state.lastEventSeq = 0;
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  $("#events").replaceChildren();
  renderRuns();
  await refreshDetail();
  const page = await api(`/api/runs/${id}/events?limit=${MAX_EVENTS_SHOWN}`);
  page.events.forEach(appendEvent);
  // The live stream resumes after what was just read: no gap, no duplicate.
  send({ type: "subscribe", topic: `workflow_run:${id}`, since: state.lastEventSeq });
}

async function refreshDetail() {
  if (!state.selected) return;
  const [run, items] = await Promise.all([
    api(`/api/runs/${state.selected}`),
    api(`/api/runs/${state.selected}/items?limit=1`),
  ]);
  const itemCounts = new Map(items.steps.map((counts) => [counts.step, counts]));
  const fields = [
    ["Workflow", run.workflow_id], ["Kind", run.kind], ["Status", run.status],
    ["Attempts", run.attempts], ["Created", when(run.created_at)],
    ["Duration", seconds(runDuration(run))],
    ["Error", run.error ? `${run.error_code}: ${run.error}` : "—"],
  ];
  if (run.wake_at) fields.push(["Wakes", timeOf(run.wake_at)]);
  if (run.rerun_of) {
    fields.push(["Rerun of", el("span", {}, runLink(run.rerun_of), ` from step ${run.rerun_from_step}`)]);
  }
  if (run.parent_run_id) {
    fields.push(["Parent", el("span", {}, runLink(run.parent_run_id), ` at step ${run.parent_step}`)]);
  }
  if (run.children && run.children.length) {
    fields.push(["Children", el("span", {}, ...run.children.flatMap((child) => [
      runLink(child.id), ` ${child.workflow_id} `,
      el("span", { class: `pill ${child.status}` }, child.status), " ",
    ]))]);
    const usage = run.children_usage || {};
    fields.push(["Children's usage", `${usage.total_tokens || 0} tokens · ${usd(usage.cost_micro_usd || 0)}`]);
  }
  $("#detail-summary").replaceChildren(...fields.flatMap(([term, value]) => [
    el("dt", {}, term),
    el("dd", { "data-field": term.toLowerCase().replace(/ /g, "-") },
      value instanceof Node ? value : String(value)),
  ]));
  $("#steps tbody").replaceChildren(...run.steps.map((step) => el(
    "tr",
    { "data-step": step.name },
    el("td", {}, String(step.position)),
    el("td", {}, step.name),
    el("td", {}, step.kind),
    el("td", {}, el("span", { class: `pill ${step.status}` }, step.status)),
    el("td", {}, String(step.attempt)),
    el("td", {}, step.duration_ms === null ? "—" : seconds(step.duration_ms)),
    el("td", { class: "wait" }, describeWait(step)),
    el("td", { class: "items" }, describeItems(itemCounts.get(step.name))),
    el("td", { class: "reused" }, step.reused_from ? runLink(step.reused_from) : ""),
    el("td", { class: "error-text" }, step.error ? `${step.error_code || ""} ${step.error}` : ""),
  )));
}

// A <time> shown in local time; its datetime attribute keeps the API's value.
function timeOf(iso) {
  return el("time", { dateTime: iso, title: `${iso} (${ago(iso)})` }, when(iso));
}

// Another run's id, opening its detail when clicked (a rerun's origin, a reused step's run).
function runLink(id) {
  const link = el("a", { href: "#", class: "mono", title: id, "data-run-id": id }, shortId(id));
  link.addEventListener("click", (event) => {
    event.preventDefault();
    selectRun(id).catch(showError);
  });
  return link;
}

// A step run beside others (a branch) or over a list (a map: its items by state).
function describeItems(counts) {
  if (!counts) return "";
  if (counts.kind !== "map") return "branch";
  const parts = [`${counts.completed}/${counts.total} done`];
  for (const state of ["running", "waiting", "failed", "cancelled"]) {
    if (counts[state]) parts.push(`${counts[state]} ${state}`);
  }
  return parts.join(" · ");
}

// What a durable wait waits for: a sleep, or an event (with its match key and timeout action).
function describeWait(step) {
  const wait = step.wait;
  if (!wait) return "";
  let what = wait.kind;
  if (wait.kind === "event") {
    what = `event ${wait.event}`;
    if (wait.match !== null && wait.match !== undefined) what += ` · match ${wait.match}`;
    if (wait.on_timeout) what += ` · on timeout ${wait.on_timeout}`;
  } else if (wait.kind === "approval") {
    what = `approval by ${shortId(wait.approver || "")}`;
  } else if (wait.kind === "child") {
    what = `child run of ${wait.workflow}`;
  }
  if (!step.wake_at) return el("span", { "data-wait-kind": wait.kind }, what);
  return el("span", { "data-wait-kind": wait.kind }, `${what} · until `, timeOf(step.wake_at));
}

function appendEvent(envelope) {
  if (envelope.seq <= state.lastEventSeq) return;
  state.lastEventSeq = envelope.seq;
  const data = envelope.data || {};
  const detail = data.status ? `${data.status}${data.step ? ` · ${data.step}` : ""}` : (data.step || "");
  const log = $("#events");
  log.append(el(
    "li",
    { "data-seq": String(envelope.seq) },
    el("span", { class: "mono muted" }, `#${envelope.seq}`),
    el("span", { class: "mono" }, new Date(envelope.ts).toLocaleTimeString()),
    el("strong", {}, envelope.event),
    el("span", {}, detail),
  ));
  while (log.children.length > MAX_EVENTS_SHOWN) log.firstChild.remove();
}

function closeDetail() {
  if (state.selected) send({ type: "unsubscribe", topic: `workflow_run:${state.selected}` });
  state.selected = null;
  $("#detail").hidden = true;
  renderRuns();
}

// ---- the websocket ----

function setLive(text, cls) {
  const live = $("#live");
  live.textContent = text;
  live.className = `live ${cls}`;
  document.body.dataset.wsState = cls;
}

function connect() {
  if (!state.token) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(
    `${scheme}://${location.host}/api/ws/workflows?token=${encodeURIComponent(state.token)}`,
  );
  state.socket = socket;
  setLive("connecting", "connecting");
  socket.addEventListener("open", () => {
    state.reconnectDelay = 500;
    setLive("live", "open");
    state.followedUsers.clear();
    followUsers();
    if (state.selected) {
      send({ type: "subscribe", topic: `workflow_run:${state.selected}`, since: state.lastEventSeq });
    }
  });
  socket.addEventListener("message", (message) => onMessage(JSON.parse(message.data)));
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return; // replaced or signed out
    if (event.code === 1008) {
      signOut(`The server refused the token (${event.reason}).`);
      return;
    }
    setLive("reconnecting", "closed");
    // Back off up to 15 s; the lists keep refreshing meanwhile.
    setTimeout(connect, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, 15000);
  });
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

// Follow the `user:` topic of every user with a listed run: their runs' status updates arrive
// live, new runs included. The admin's own topic is followed too.
function followUsers() {
  const users = new Set([tokenSubject(state.token)]);
  for (const run of state.runs.values()) users.add(run.user_id);
  for (const user of users) {
    if (!user || state.followedUsers.has(user)) continue;
    if (state.followedUsers.size >= MAX_FOLLOWED_USERS) break;
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    send({ type: "subscribe", topic: `user:${user}` });
    state.followedUsers.add(user);
  }
}

function onMessage(message) {
  if (message.type === "error") {
    console.warn("websocket:", message.code, message.message);
    return;
  }
  if (message.type !== "event") return;
  document.body.dataset.wsEvents = String(Number(document.body.dataset.wsEvents) + 1);
  if (state.selected && message.topic === `workflow_run:${state.selected}`) {
    if (!message.snapshot) appendEvent(message);
    const status = message.data.status;
    // Streamed tokens change no step: the log shows them, the detail stays as it is.
    const stepsChanged = message.event !== "workflow_status_update" || FINAL.has(status)
      || status === "waiting";
    if (stepsChanged && message.event !== "step_tokens") refreshDetail().catch(showError);
  }
  if (message.event === "workflow_status_update") applyStatusUpdate(message);
}

// ---- queues, workers, usage, quota, Stripe, maintenance ----

async function refreshOps() {
  const report = await api("/api/admin/queues");
  $("#queues tbody").replaceChildren(...report.queues.map((queue) => el(
    "tr",
    { "data-queue": queue.name },
    el("td", {}, queue.name),
    el("td", { class: queue.depth > 0 ? "num busy" : "num" }, String(queue.depth)),
  )));
  // RabbitMQ tells unacknowledged messages only to its management API: null here.
  $("#unacked").textContent = report.unacked === null
    ? `Broker: ${report.broker} (unacknowledged messages: see its management UI)`
    : `${report.unacked} message(s) delivered, not yet acknowledged (${report.broker})`;
  $("#workers tbody").replaceChildren(...report.workers.map((worker) => el(
    "tr",
    { "data-worker": worker.hostname },
    el("td", { class: "mono", title: `pid ${worker.pid}, concurrency ${worker.concurrency}` }, worker.hostname),
    el("td", {}, worker.queues.join(", ")),
    el("td", { class: "num" }, `${worker.active}/${worker.concurrency}`),
    el("td", { class: "num" }, String(worker.processed)),
    el("td", { title: when(worker.seen_at) }, ago(worker.seen_at)),
  )));
  $("#workers-empty").hidden = report.workers.length > 0;
  await refreshStripe();
}

async function refreshSlow() {
  const [tokens, cost, quota, maintenance, flow] = await Promise.all([
    api("/api/analytics/trends?metric=tokens&aggregation=daily"),
    api("/api/analytics/trends?metric=cost_micro_usd&aggregation=daily"),
    api("/api/admin/quota-usage"),
    api("/api/admin/maintenance"),
    // The flow card must not keep the other cards from rendering when its read fails.
    api("/api/admin/flow").catch((error) => { showError(error); return null; }),
  ]);
  renderUsageChart(tokens.series, cost.series);
  renderQuota(quota);
  renderMaintenance(maintenance);
  if (flow) renderFlow(flow);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function renderUsageChart(tokenSeries, costSeries) {
  const width = 480;
  const height = 160;
  const pad = { left: 44, right: 44, top: 10, bottom: 22 };
  const n = tokenSeries.length;
  const maxTokens = Math.max(1, ...tokenSeries.map((p) => p.value || 0));
  const maxCost = Math.max(1, ...costSeries.map((p) => p.value || 0));
  const slot = (width - pad.left - pad.right) / Math.max(1, n);
  const y = (value, max) => pad.top + (height - pad.top - pad.bottom) * (1 - value / max);
  const bars = tokenSeries.map((point, i) => {
    const top = y(point.value || 0, maxTokens);
    const cost = (costSeries[i] && costSeries[i].value) || 0;
    return svg(
      "rect",
      { x: pad.left + i * slot + 1, y: top, width: Math.max(1, slot - 2), height: height - pad.bottom - top, class: "bar-tokens" },
      svg("title", {}, `${point.date.slice(0, 10)}: ${point.value || 0} tokens, ${usd(cost)}`),
    );
  });
  const line = costSeries
    .map((point, i) => `${pad.left + i * slot + slot / 2},${y(point.value || 0, maxCost)}`)
    .join(" ");
  const label = (x, yy, text, anchor) =>
    svg("text", { x, y: yy, "text-anchor": anchor, class: "axis" }, text);
  const first = tokenSeries[0] ? tokenSeries[0].date.slice(5, 10) : "";
  const last = tokenSeries[n - 1] ? tokenSeries[n - 1].date.slice(5, 10) : "";
  $("#usage-chart").replaceChildren(svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" },
    svg("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis-line" }),
    ...bars,
    svg("polyline", { points: line, class: "line-cost" }),
    label(pad.left - 4, pad.top + 8, compact(maxTokens), "end"),
    label(pad.left - 4, height - pad.bottom, "0", "end"),
    label(width - pad.right + 4, pad.top + 8, usd(maxCost), "start"),
    label(pad.left, height - 6, first, "start"),
    label(width - pad.right, height - 6, last, "end"),
  ));
}

function renderQuota(quota) {
  $("#quota tbody").replaceChildren(...quota.plans.map((plan) => {
    const percent = plan.token_quota ? Math.min(100, (100 * plan.tokens_used) / plan.token_quota) : 0;
    return el(
      "tr",
      { "data-plan": plan.plan_id },
      el("td", {}, plan.name),
      el("td", { class: "num", title: `${plan.active_users} active this month` }, String(plan.users)),
      el("td", {},
        el("div", { class: "bar", title: `${percent.toFixed(1)}%` },
          el("div", { class: `fill ${percent >= 80 ? "failed" : "completed"}`, style: `width:${percent}%` })),
        el("span", { class: "muted" }, `${compact(plan.tokens_used)} / ${compact(plan.token_quota)}`)),
      el("td", { class: "num" }, String(plan.users_over_80_percent)),
      el("td", { class: "num" }, String(plan.users_at_quota)),
    );
  }));
}

async function refreshStripe() {
  const status = $("#stripe-filter").value;
  const query = new URLSearchParams({ limit: "20" });
  if (status) query.set("status", status);
  const page = await api(`/api/admin/stripe-events?${query}`);
  $("#stripe tbody").replaceChildren(...page.events.map((event) => {
    const replay = el("button", { type: "button", class: "small" }, "Replay");
    replay.addEventListener("click", () => replayStripe(event.id, replay));
    return el(
      "tr",
      { "data-stripe-event": event.id },
      el("td", { class: "mono", title: event.id }, event.id.slice(0, 14)),
      el("td", {}, event.type),
      el("td", { title: event.last_error || "" }, el("span", { class: `pill ${event.status}` }, event.status)),
      el("td", { class: "num" }, String(event.attempts)),
      el("td", { title: when(event.received_at) }, ago(event.received_at)),
      el("td", {}, replay),
    );
  }));
  $("#stripe-empty").hidden = page.events.length > 0;
}

async function replayStripe(id, button) {
  button.disabled = true;
  try {
    await api(`/api/admin/stripe-events/${encodeURIComponent(id)}/replay`, { method: "POST" });
    button.textContent = "Queued";
    await refreshStripe();
  } catch (error) {
    showError(error);
    button.disabled = false;
  }
}

function renderMaintenance(body) {
  $("#maintenance-tz").textContent = `(${body.timezone})`;
  $("#maintenance tbody").replaceChildren(...body.jobs.map((job) => {
    const last = job.last_runs[0];
    const outcome = last
      ? el("span", { class: `pill ${last.status}`, title: last.error || JSON.stringify(last.rows_affected) }, last.status)
      : el("span", { class: "muted" }, "never ran");
    return el(
      "tr",
      { "data-job": job.name },
      el("td", { title: job.description }, job.name),
      el("td", {}, job.schedule),
      el("td", { title: last ? when(last.started_at) : "" }, last ? `${last.period_key} · ${ago(last.started_at)}` : "—"),
      el("td", {}, outcome),
      el("td", { title: when(job.next_run_at) }, ago(job.next_run_at)),
    );
  }));
  const schedules = body.schedules;
  $("#schedules-count").textContent = `${schedules.active} active · ${schedules.paused} paused`;
  $("#schedules tbody").replaceChildren(...schedules.next.map((one) => el(
    "tr",
    { "data-schedule": one.id },
    el("td", {}, one.workflow_id),
    el("td", {}, `${one.cron} (${one.timezone})`),
    el("td", { class: "mono", title: one.user_id }, shortId(one.user_id)),
    el("td", { title: when(one.next_due_at) }, ago(one.next_due_at)),
    el("td", {}, one.last_error_code || ""),
  )));
}

function renderFlow(body) {
  const reasons = Object.entries(body.runs_waiting).map(([reason, n]) => `${n} ${reason}`);
  $("#waiting-reasons").textContent = reasons.length ? `(waiting: ${reasons.join(" · ")})` : "";
  $("#held-keys tbody").replaceChildren(...body.queued_by_key.map((key) => el(
    "tr",
    { "data-key": key.key },
    el("td", { class: "mono" }, key.key),
    el("td", { class: "num" }, String(key.held)),
    el("td", { class: "num" }, `${key.in_flight} / ${key.limit ?? "—"}`),
  )));
  $("#held-keys-empty").hidden = body.queued_by_key.length > 0;
  $("#rate-limits tbody").replaceChildren(...body.rate_limits.map((limit) => el(
    "tr",
    { "data-limit": limit.key },
    el("td", { class: "mono" }, limit.key),
    el("td", { class: "num" }, `${limit.tokens_used} / ${limit.tokens_per_minute ?? "—"}`),
    el("td", { class: "num" }, `${limit.requests_used} / ${limit.requests_per_minute ?? "—"}`),
    el("td", {}, limit.blocked_seconds > 0 ? `${limit.blocked_seconds.toFixed(1)} s` : ""),
  )));
  $("#rate-limits-empty").hidden = body.rate_limits.length > 0;
  $("#reservations tbody").replaceChildren(...body.reservations.map((hold) => el(
    "tr",
    { "data-run": hold.run_id },
    el("td", { class: "mono", title: hold.run_id }, shortId(hold.run_id)),
    el("td", { class: "mono", title: hold.user_id }, shortId(hold.user_id)),
    el("td", { class: "num" }, hold.item === null ? String(hold.position) : `${hold.position}.${hold.item}`),
    el("td", { class: "num" }, String(hold.credits)),
    el("td", { class: "num" }, String(hold.tokens)),
    el("td", { title: when(hold.created_at) }, `${Math.round(hold.age_seconds)} s`),
  )));
  $("#reservations-empty").hidden = body.reservations.length > 0;
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("#sign-in-error").textContent = "";
    signIn($("#token").value.trim());
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#detail-close").addEventListener("click", closeDetail);
  $("#status-filter").addEventListener("change", () => refreshRuns().catch(showError));
  $("#stripe-filter").addEventListener("change", () => refreshStripe().catch(showError));
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
});
