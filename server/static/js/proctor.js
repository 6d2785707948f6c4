// The proctor's dashboard: sign in, pick an exam, watch its feed (docs/protocol.md section 16) and act on its
// sessions over REST (section 17). Rows are always complete summaries, so applying one twice is harmless; a
// gap in the update numbers asks for a fresh snapshot.
import { Backoff, api, clock, el, loginForm, staff, wsUrl } from "./api.js";
import { bars, histogram } from "./charts.js";

const $ = (id) => document.getElementById(id);
const FINISHED = new Set(["submitted", "expired", "terminated"]);
const TERMINAL = new Set([4001, 4003, 4400]);

let who = staff.load();
let room = null; // template id
let ws = null;
let seq = 0;
let rows = new Map(); // session id -> {row, at: performance.now() when received}
let selected = null;
let names = new Map(); // template id -> name
let reconnectTimer = null;
let waitingSnapshot = false;
const backoff = new Backoff();

// ---- sign in and pick a room ----------------------------------------------------------------------------------
function showSignedIn() {
  $("login").hidden = true;
  $("picker").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `${who.name} (${who.role})`;
  loadRooms();
}

async function loadRooms() {
  try {
    const [{ assignments }, { templates }] = await Promise.all([
      api("GET", "/api/proctor/assignments", { token: who.token }), api("GET", "/api/templates")]);
    names = new Map(templates.map((t) => [t.id, t.name]));
    const ids = [...new Set(assignments.map((a) => a.template_id))];
    $("room").replaceChildren(...ids.map((id) => el("option", { value: id }, `${names.get(id) || "Exam"} (#${id})`)));
    if (!ids.length) $("picker-error").textContent = "No exam is assigned to you yet; an admin assigns them.";
    const wanted = Number(new URLSearchParams(location.search).get("template"));
    if (wanted && ids.includes(wanted)) { $("room").value = String(wanted); watch(wanted); }
  } catch (err) {
    if (err.status === 401) return signOut();
    $("picker-error").textContent = err.message;
  }
}

function signOut() {
  staff.clear();
  who = null;
  if (ws) { const old = ws; ws = null; old.close(1000); }
  location.assign("/proctor");
}

loginForm((w) => { who = w; showSignedIn(); });
$("sign-out").addEventListener("click", signOut);
$("room-form").addEventListener("submit", (e) => { e.preventDefault(); watch(Number($("room").value)); });

function watch(templateId) {
  room = templateId;
  history.replaceState(null, "", `/proctor?template=${templateId}`);
  rows = new Map();
  selected = null;
  $("actions").hidden = true;
  $("dashboard").hidden = false;
  $("analytics-link").href = `/analytics?template=${templateId}`;
  if (ws) { const old = ws; ws = null; old.close(1000); }
  backoff.reset();
  connect();
  loadResults();
}

// ---- the feed -----------------------------------------------------------------------------------------------
function connect() {
  clearTimeout(reconnectTimer);
  setFeed("Connecting…");
  const socket = new WebSocket(wsUrl(`/ws/proctor?template=${room}&token=${encodeURIComponent(who.token)}`));
  ws = socket;
  socket.onmessage = (e) => { if (ws === socket) onFrame(JSON.parse(e.data)); };
  socket.onclose = (e) => {
    if (ws !== socket) return;
    ws = null;
    if (TERMINAL.has(e.code)) { setFeed(`Refused: ${e.reason || e.code}`, "bad"); return; }
    const wait = backoff.next();
    setFeed(`Reconnecting in ${Math.ceil(wait / 1000)} s…`, "warn");
    reconnectTimer = setTimeout(connect, wait);
  };
}

function onFrame(f) {
  if (f.type === "snapshot") {
    backoff.reset();
    waitingSnapshot = false;
    rows = new Map(f.sessions.map((r) => [r.session, { row: r, at: performance.now() }]));
    seq = f.seq;
    setFeed("Live", "ok");
    render();
  } else if (f.type === "update") {
    if (f.seq <= seq) return; // already in what we have
    if (f.seq > seq + 1) { // one went missing: ask for the whole room again
      if (!waitingSnapshot) { waitingSnapshot = true; ws?.send(JSON.stringify({ type: "resync" })); }
      return;
    }
    seq = f.seq;
    const now = performance.now();
    for (const r of f.sessions) rows.set(r.session, { row: r, at: now });
    render();
  } else if (f.type === "error") {
    setFeed(f.message, "bad");
  }
}

function setFeed(text, level = "") {
  $("feed-state").textContent = text;
  $("feed-state").className = `pill feed-state ${level}`;
}

// ---- rendering ----------------------------------------------------------------------------------------------
function timeLeft({ row, at }) {
  if (row.status === "active") return Math.max(0, row.time_left_ms - (performance.now() - at));
  return FINISHED.has(row.status) ? 0 : row.time_left_ms;
}

function riskClass(risk) { return risk >= 30 ? "risk-high" : risk >= 10 ? "risk-mid" : ""; }

function events(row) {
  return Object.entries(row.events).map(([k, n]) => `${k} ${n}`).join(", ");
}

function render() {
  const list = [...rows.values()].sort((a, b) => a.row.name.localeCompare(b.row.name) || a.row.session.localeCompare(b.row.session));
  $("grid-empty").hidden = list.length > 0;
  const live = list.filter((x) => !FINISHED.has(x.row.status)).length;
  $("grid-count").textContent = list.length ? `(${live} live, ${list.length - live} finished)` : "";
  $("grid").tBodies[0].replaceChildren(...list.map(renderRow));
  renderAlerts(list.map((x) => x.row));
  renderTarget();
  if (list.length && !live) loadResults(); // the exam is over: show how it went
}

function renderRow(x) {
  const r = x.row;
  const pct = r.total ? Math.round((100 * r.answered) / r.total) : 0;
  const tr = el("tr", { "data-session": r.session, class: [FINISHED.has(r.status) ? "finished" : "", r.session === selected ? "selected" : ""].join(" ") },
    el("th", { scope: "row" }, r.name),
    el("td", {}, el("span", { class: `pill ${r.status === "active" ? "ok" : r.status === "paused" ? "warn" : ""}` }, r.status), r.reason ? ` (${r.reason})` : ""),
    el("td", {}, el("div", { class: "bar-track", role: "progressbar", "aria-valuenow": r.answered, "aria-valuemin": 0, "aria-valuemax": r.total,
      "aria-label": `${r.answered} of ${r.total} answered` }, el("div", { class: "bar-fill", style: `width:${pct}%` })),
      el("span", { class: "muted" }, `${r.answered}/${r.total}${r.marked ? `, ${r.marked} marked` : ""}`)),
    el("td", { class: "time-left", "data-session": r.session }, timeText(x)),
    el("td", {}, el("span", { class: `dot ${r.online ? "on" : ""}`, "aria-hidden": "true" }), r.online ? "online" : "offline",
      r.offline_ms > 0 ? el("div", { class: "muted" }, `${clock(r.offline_ms)} lost`) : null),
    el("td", {}, el("span", { class: riskClass(r.risk), title: r.risk_reasons.join("; ") }, String(r.risk)),
      r.risk_reasons.length ? el("div", { class: "muted" }, r.risk_reasons.join("; ")) : null),
    el("td", { class: "events" }, r.flagged ? el("span", { class: "pill bad" }, "flagged") : null, r.violations ? ` ${r.violations} violation(s) ` : "",
      el("div", { class: "muted" }, events(r))),
    el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `Act on ${r.name}`, onclick: () => select(r.session) }, "Act")),
  );
  return tr;
}

function timeText(x) {
  if (x.row.status === "paused") return `paused · ${clock(x.row.time_left_ms)}`;
  if (FINISHED.has(x.row.status)) return "–";
  return clock(timeLeft(x));
}

setInterval(() => {
  for (const cell of document.querySelectorAll("#grid td.time-left")) {
    const x = rows.get(cell.dataset.session);
    if (x) cell.textContent = timeText(x);
  }
}, 1000);

/** The rule of alerts() in sessions/proctoring.py: live sessions at risk or flagged, riskiest first, at most 20. */
function renderAlerts(list) {
  const alerts = list.filter((r) => (r.status === "active" || r.status === "paused") && (r.risk > 0 || r.flagged))
    .sort((a, b) => b.risk - a.risk || Number(b.flagged) - Number(a.flagged) || a.session.localeCompare(b.session)).slice(0, 20);
  $("alerts-empty").hidden = alerts.length > 0;
  $("alerts").replaceChildren(...alerts.map((r) => el("li", { class: r.flagged ? "flagged" : "", "data-session": r.session },
    el("strong", {}, r.name), ` · risk ${r.risk}`, r.flagged ? " · flagged" : "",
    el("div", { class: "muted" }, r.risk_reasons.join("; ") || "flagged"),
    el("button", { type: "button", class: "secondary", onclick: () => select(r.session) }, "Act"))));
}

// ---- actions ------------------------------------------------------------------------------------------------
function select(sid) {
  selected = sid;
  $("actions").hidden = false;
  $("action-result").textContent = "";
  render();
  $("actions-title").scrollIntoView({ block: "nearest" });
  $("reason").focus();
}

function renderTarget() {
  const x = rows.get(selected);
  if (!x) return;
  $("target-name").textContent = x.row.name;
  $("target-status").textContent = `${x.row.status} · ${x.row.answered}/${x.row.total} answered · session ${x.row.session}`;
}

for (const button of document.querySelectorAll("#actions button[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action));
}

async function act(action) {
  const x = rows.get(selected);
  if (!x) return;
  const body = { action, reason: $("reason").value.trim() };
  if (action === "extend") body.seconds = Number($("seconds").value);
  if (action === "message") body.text = $("message-text").value.trim();
  if ((action === "terminate" || action === "submit") &&
      !window.confirm(`${action === "terminate" ? "Terminate" : "Submit"} ${x.row.name}'s attempt? This cannot be undone.`)) return;
  const out = $("action-result");
  out.className = "";
  out.textContent = "…";
  try {
    const result = await api("POST", `/api/proctor/sessions/${selected}/actions`, { token: who.token, body });
    rows.set(selected, { row: result.session, at: performance.now() });
    out.textContent = `${action}: ${result.outcome} for ${x.row.name}`;
    if (action === "message") $("message-text").value = "";
    render();
  } catch (err) {
    out.className = "error";
    out.textContent = `${action} refused: ${err.message}`;
    if (err.status === 401) signOut();
  }
}

$("room-message").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", `/api/proctor/templates/${room}/message`, { token: who.token, body: { text: $("room-text").value.trim() } });
    $("room-text").value = "";
    setFeed("Live · message sent to the room", "ok");
  } catch (err) {
    setFeed(`Message refused: ${err.message}`, "bad");
  }
});

// ---- results of the exam: score distribution and accuracy per topic ---------------------------------------------
let resultsLoadedFor = null;
async function loadResults(force = false) {
  if (!force && resultsLoadedFor === `${room}:${rows.size}`) return;
  resultsLoadedFor = `${room}:${rows.size}`;
  try {
    const [scores, topics] = await Promise.all([
      api("GET", `/api/templates/${room}/scores`, { token: who.token }),
      api("GET", `/api/analytics/topics?template_id=${room}`, { token: who.token })]);
    $("results-summary").textContent = scores.attempts
      ? `${scores.attempts} stored attempt(s); mean score ${scores.mean.toFixed(1)} of ${scores.max_score}.`
      : "No stored attempts yet: finished attempts appear here once they are written to PostgreSQL.";
    $("chart-scores").replaceChildren(histogram({ scores: scores.scores, lo: scores.min_score, hi: scores.max_score,
      label: `Score distribution of ${scores.attempts} attempts` }));
    $("chart-topics").replaceChildren(bars({ label: "Accuracy per topic",
      items: topics.topics.map((t) => ({ label: t.topic.replaceAll("-", " "), value: t.accuracy })) }));
  } catch (err) {
    $("results-summary").textContent = `Results unavailable: ${err.message}`;
  }
}
$("results-refresh").addEventListener("click", () => loadResults(true));

// ---- start --------------------------------------------------------------------------------------------------
if (who) showSignedIn();
else $("login").hidden = false;
