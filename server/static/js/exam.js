// The student's exam page: /exam/<sid>#token=<session token>. Speaks docs/protocol.md sections 4-13 over JSON.
//
// Every answer and anti-cheat event goes into a localStorage outbox first, then is sent one at a time (the next
// only after the previous one's reply), so that a refused or lost message can never be overtaken by a later one
// that the server would accept. A message leaves the outbox on its ack; on a reconnect the `state` frame's
// last_seq settles everything already stored, and the rest is sent again with the same seq.
//
// Adaptive tests (section 18): the `state` frame names the current item; only it takes an answer, once, with a
// choice; earlier items are shown read-only. The answer's ack is followed by an `item` frame (the next question,
// appended and shown) or by `finished` with reason "completed" and the ability estimate.
import { Backoff, api, clock, el, wsUrl } from "./api.js";
import { Outbox, loadSession, saveSession } from "./store.js";

const $ = (id) => document.getElementById(id);
const sid = location.pathname.split("/")[2];
const KEYS = "ABCD";
const TERMINAL = new Set([4000, 4001, 4003, 4004, 4009, 4400, 1002, 1007, 1009]);
const DROP_CODES = new Set(["unknown_question", "invalid_choice", "malformed", "invalid_message", "unknown_type", "too_late"]);
const STALE_CODES = new Set(["not_current"]); // adaptive: our idea of the current item was out of date
const HEARTBEAT_MS = 30000;

// ---- the token: from the link's fragment (then off the address bar), else from an earlier visit ----------------
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  saveSession(sid, { token: fragment.get("token") });
  history.replaceState(null, "", location.pathname);
}
const token = loadSession(sid)?.token;
const outbox = new Outbox(sid);

const exam = {
  status: "connecting", // connecting | active | paused | finished
  questions: [],
  saved: {}, // question id -> the answer the server has acknowledged {choice, marked, time_ms}
  index: 0,
  violations: 0,
  spent: {}, // question id -> ms spent on it in this page
  shownAt: performance.now(),
  adaptive: null, // adaptive tests: the id of the current item (the only one that takes an answer)
  maxItems: null, // adaptive tests: the most items the test can have (POST /api/sessions' `questions`), if known
};
let ws = null;
let inFlight = null; // the seq sent and not yet answered
let reconnectTimer = null;
let heartbeatTimer = null;
let relearn = false; // a not_active we did not expect: reconnect to read the truth from `state`
const backoff = new Backoff();
let timer = { running: false, endAt: 0, left: null }; // endAt on performance.now()'s clock
let timeUp = false;

// ---- the view of an answer: acknowledged, overlaid by what waits in the outbox --------------------------------
function answerOf(q) {
  let a = exam.saved[q] || null;
  for (const m of outbox.items) if (m.type === "answer" && m.q === q) a = { choice: m.choice, marked: m.marked, time_ms: m.time_ms };
  return a;
}

function spentOn(q) {
  const current = exam.questions[exam.index];
  const extra = current && current.id === q ? performance.now() - exam.shownAt : 0;
  return Math.min(86400000, Math.round((exam.spent[q] || 0) + extra));
}

function canAnswer() {
  return exam.status === "active" && !(timer.running && timer.endAt <= performance.now());
}

/** Whether question `q` takes an answer now: any question of a fixed paper; in an adaptive test only the current
 * item, and only until its answer is sent (an answer is final: the next item is chosen from it). */
function answerable(q) {
  if (!canAnswer()) return false;
  return exam.adaptive === null || (q === exam.adaptive && !outbox.pendingQuestions().has(q));
}

function answer(q, choice, marked) {
  if (!answerable(q)) return;
  if (exam.adaptive !== null && choice === null) return; // no skips in an adaptive test
  outbox.add({ type: "answer", q, choice, marked: exam.adaptive === null ? marked : false, time_ms: spentOn(q) });
  render();
  pump();
}

function report(kind) {
  if (exam.status !== "active") return; // paused: the server records no events (protocol section 12)
  outbox.add({ type: "event", kind });
  pump();
}

// ---- the connection -----------------------------------------------------------------------------------------
function connect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (ws || exam.status === "finished") return;
  if (!navigator.onLine) { setConnection("Offline: answers are kept on this device", "warn"); return; }
  setConnection("Connecting…");
  const socket = new WebSocket(wsUrl(`/ws/student?token=${encodeURIComponent(token)}`));
  ws = socket;
  socket.onmessage = (e) => { if (ws === socket) onFrame(JSON.parse(e.data)); };
  socket.onclose = (e) => { if (ws === socket) onClose(e.code, e.reason); };
}

function dropConnection() {
  if (!ws) return;
  const old = ws;
  ws = null;
  old.close(1000);
  onClose(1006, "");
}

function send(frame) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(frame)); return true; }
  return false;
}

/** Send the oldest unsettled message, if nothing else is waiting for its reply. */
function pump() {
  renderSaveStatus();
  if (inFlight !== null || exam.status !== "active" || relearn) return;
  const head = outbox.head;
  if (head && send(head)) inFlight = head.seq;
}

function onClose(code, reason) {
  ws = null;
  inFlight = null;
  clearInterval(heartbeatTimer);
  if (exam.status === "finished") return;
  if (code === 4009) { $("elsewhere").hidden = false; setConnection("Open elsewhere", "bad"); return; }
  if (TERMINAL.has(code)) { fatal(closeMessage(code, reason)); return; }
  if (relearn) { relearn = false; connect(); return; }
  if (!navigator.onLine) { setConnection("Offline: answers are kept on this device", "warn"); return; }
  const wait = backoff.next();
  setConnection(`Reconnecting in ${Math.ceil(wait / 1000)} s…`, "warn");
  reconnectTimer = setTimeout(connect, wait);
}

function closeMessage(code, reason) {
  switch (code) {
    case 4001: return "This exam link is not valid any more (" + (reason || "unauthorized") + "). Start the test again from the home page.";
    case 4003: return "This page may not open exams from this address (the server's EXAMHUB_PUBLIC_URL does not match).";
    case 4004: return "This exam session does not exist or has expired. Start a new test from the home page.";
    case 4000: return "The attempt is over.";
    default: return `The connection was refused (${code} ${reason}). Please reload; if it happens again, tell your proctor.`;
  }
}

function onFrame(f) {
  switch (f.type) {
    case "state": return onState(f);
    case "ack": return settle(f.seq, true);
    case "error": return onError(f);
    case "warning": return onWarning(f);
    case "time": return setTimer(f.time_left_ms, exam.status === "paused");
    case "clock": return onClock(f);
    case "message": return banner(`Message from your proctor: ${f.text}`, "info", true);
    case "item": return onItem(f);
    case "finished": return finish(f.status, f.reason, f.result, f.ability);
    default: return undefined; // unknown frames are ignored (protocol section 7)
  }
}

function onState(f) {
  backoff.reset();
  relearn = false;
  exam.questions = f.questions;
  exam.violations = f.violations;
  if (["submitted", "expired", "terminated"].includes(f.status)) { finish(f.status, f.reason, f.result, f.ability); return; }
  exam.saved = {};
  for (const [q, a] of Object.entries(f.answers)) exam.saved[Number(q)] = { choice: a.choice, marked: a.marked, time_ms: a.time_ms };
  outbox.settle(f.last_seq);
  exam.status = f.status;
  setAdaptive(f.adaptive ? f.adaptive.current : null);
  setTimer(f.time_left_ms, f.status === "paused");
  setConnection("Connected", "ok");
  $("loading").hidden = true;
  $("exam").hidden = false;
  const name = loadSession(sid)?.name;
  if (name) $("exam-title").textContent = name;
  if (f.status === "paused") banner("Your proctor has paused the exam. The clock is stopped.", "warn");
  clearInterval(heartbeatTimer);
  heartbeatTimer = setInterval(() => send({ type: "heartbeat", seq: outbox.counter + 1 }), HEARTBEAT_MS);
  render();
  enforceFullscreen();
  pump();
}

/** A reply to a sequenced message: it is stored (ack), or it never will be (a refusal): either way it leaves. */
function settle(seq, stored) {
  const m = outbox.items.find((x) => x.seq === seq);
  if (m && stored && m.type === "answer") exam.saved[m.q] = { choice: m.choice, marked: m.marked, time_ms: m.time_ms };
  if (m) outbox.remove(seq);
  if (seq === inFlight) inFlight = null;
  render();
  pump();
}

function onError(f) {
  const seq = f.seq;
  if (seq === null || seq === undefined) {
    if (f.code !== "superseded" && f.code !== "unavailable") setConnection(f.message, "bad");
    return; // a close follows and says what to do
  }
  if (seq === inFlight) inFlight = null;
  if (STALE_CODES.has(f.code)) {
    // A client bug by the protocol (section 18): the message can never be stored. Drop it, and read the current
    // item again from a fresh `state` before sending anything else.
    console.error("examhub refused a message", f);
    relearn = true;
    settle(seq, false);
    dropConnection();
  } else if (DROP_CODES.has(f.code)) {
    console.error("examhub refused a message", f);
    if (f.code !== "too_late") banner(`A change could not be saved (${f.code}). Please choose again.`, "bad");
    settle(seq, false);
  } else if (f.code === "not_active") {
    // Nothing was stored and the seq is free. Paused: keep it for the resume. Otherwise the session may have
    // ended or been paused without a clock frame reaching us: a reconnect's `state` says which.
    if (exam.status !== "paused") { relearn = true; dropConnection(); }
  } else if (f.code === "rate_limited") {
    setTimeout(pump, f.retry_after_ms || 1000);
  }
  // unavailable: kept; close 4503 follows and the reconnect resends it. superseded: close 4009 follows.
}

/** Adaptive tests: the mode, from the `state` frame; on every (re)connect the page shows the current item. */
function setAdaptive(current) {
  exam.adaptive = current;
  for (const e of document.querySelectorAll("[data-adaptive]")) e.hidden = current === null;
  for (const e of document.querySelectorAll("[data-fixed]")) e.hidden = current !== null;
  for (const id of ["prev", "mark", "clear"]) $(id).hidden = current !== null;
  $("adaptive-note").hidden = current === null;
  $("next").textContent = current === null ? "Next →" : "Back to the current question →";
  if (current === null) return;
  exam.maxItems = loadSession(sid)?.questions ?? null;
  const i = exam.questions.findIndex((q) => q.id === current);
  if (i >= 0) exam.index = i;
}

/** Adaptive tests: the next item, chosen from the answer just acknowledged. */
function onItem(f) {
  const q = f.question;
  if (!exam.questions.some((x) => x.id === q.id)) exam.questions.push(q);
  exam.adaptive = q.id;
  go(exam.questions.findIndex((x) => x.id === q.id));
  $("question").focus(); // a screen reader reads the new question; a held key cannot answer it by accident
}

function onWarning(f) {
  exam.violations = f.violations;
  const level = f.level === "warn" ? "warn" : "bad";
  banner(`${f.message} (${f.violations} recorded)`, level);
}

function onClock(f) {
  exam.status = f.status;
  setTimer(f.time_left_ms, f.status === "paused");
  const what = { pause: "Your proctor paused the exam. The clock is stopped.", resume: "The exam has resumed.",
    extend: "Your proctor changed your time.", credit: "Time lost to a dropped connection was given back." }[f.action];
  banner(what || "The clock changed.", f.status === "paused" ? "warn" : "info");
  render();
  pump();
}

// ---- the clock ----------------------------------------------------------------------------------------------
function setTimer(leftMs, paused) {
  timer = paused ? { running: false, endAt: 0, left: leftMs } : { running: true, endAt: performance.now() + leftMs, left: null };
  renderTimer();
}

function renderTimer() {
  const t = $("timer");
  if (exam.status === "finished") { t.textContent = "Finished"; t.className = ""; return; }
  if (!timer.running) {
    t.textContent = timer.left === null ? "--:--" : `Paused · ${clock(timer.left)}`;
    t.className = "paused";
    return;
  }
  const left = timer.endAt - performance.now();
  t.textContent = left > 0 ? clock(left) : "Time is up";
  t.className = left < 60000 ? "low" : "";
  if ((left <= 0) !== timeUp) { timeUp = left <= 0; renderQuestion(); } // stop taking input at 0; the outbox drains
}
setInterval(renderTimer, 250);

// ---- rendering ----------------------------------------------------------------------------------------------
function render() {
  if (!exam.questions.length || exam.status === "finished") return;
  renderQuestion();
  renderNavigator();
  renderSaveStatus();
}

function renderQuestion() {
  const q = exam.questions[exam.index];
  if (!q) return;
  const a = answerOf(q.id);
  const pending = outbox.pendingQuestions().has(q.id);
  $("q-number").textContent = exam.adaptive === null ? `Question ${exam.index + 1} of ${exam.questions.length}` :
    `Question ${exam.index + 1} (adaptive${exam.maxItems ? `, up to ${exam.maxItems}` : ""})`;
  $("q-topic").textContent = q.topic.replaceAll("-", " ");
  $("q-text").textContent = q.text;
  const status = $("answer-status");
  if (pending) { status.textContent = "Not yet saved"; status.className = "pill warn"; }
  else if (a && a.choice && exam.adaptive !== null) { status.textContent = "Saved · final"; status.className = "pill ok"; }
  else if (a && a.choice) { status.textContent = "Saved"; status.className = "pill ok"; }
  else { status.textContent = "Not answered"; status.className = "pill"; }
  const enabled = answerable(q.id);
  const focused = document.activeElement?.dataset?.option;
  $("options").replaceChildren(...q.options.map((o, i) => el("button", {
    type: "button", class: "option", role: "radio", "aria-checked": String(a?.choice === o.id), "data-option": o.id,
    "aria-keyshortcuts": `${i + 1} ${KEYS[i]}`, disabled: !enabled, onclick: () => choose(i),
  }, el("span", { class: "key", "aria-hidden": "true" }, KEYS[i] || i + 1), el("span", {}, o.text))));
  if (focused) $("options").querySelector(`[data-option="${focused}"]`)?.focus();
  const marked = Boolean(a?.marked);
  $("mark").setAttribute("aria-pressed", String(marked));
  $("mark").textContent = marked ? "Marked for review ✓" : "Mark for review";
  $("mark").disabled = !enabled;
  $("clear").disabled = !enabled || !a?.choice;
  $("prev").disabled = exam.index === 0;
  $("next").disabled = exam.index === exam.questions.length - 1;
  $("next").hidden = exam.adaptive !== null && q.id === exam.adaptive;
  $("submit").disabled = exam.status !== "active";
}

function renderNavigator() {
  const pending = outbox.pendingQuestions();
  $("navigator").replaceChildren(...exam.questions.map((q, i) => {
    const a = answerOf(q.id);
    const current = q.id === exam.adaptive;
    const classes = [a?.choice ? "answered" : "", a?.marked ? "marked" : "", pending.has(q.id) ? "unsaved" : "",
      current ? "current" : ""].join(" ");
    const words = [a?.choice ? "answered" : "unanswered", a?.marked ? "marked for review" : "", pending.has(q.id) ? "not yet saved" : "",
      current ? "current question" : "", exam.adaptive !== null && !current ? "final" : ""];
    return el("li", {}, el("button", { type: "button", class: classes, "aria-current": i === exam.index ? "true" : false,
      "aria-label": `Question ${i + 1}: ${words.filter(Boolean).join(", ")}`, "data-q": q.id, onclick: () => go(i) }, i + 1));
  }));
  const answered = exam.questions.filter((q) => answerOf(q.id)?.choice).length;
  const marked = exam.questions.filter((q) => answerOf(q.id)?.marked).length;
  $("counts").textContent = exam.adaptive === null ? `${answered} answered · ${marked} marked · ${exam.questions.length - answered} unanswered` :
    `${answered} answered${exam.maxItems ? ` · up to ${exam.maxItems} questions` : ""}`;
}

function renderSaveStatus() {
  const s = $("save-status");
  const n = outbox.pendingQuestions().size;
  if (n) { s.textContent = `${n} not yet saved`; s.className = "pill warn"; }
  else if (Object.keys(exam.saved).length) { s.textContent = "All answers saved"; s.className = "pill ok"; }
  else { s.textContent = "No answers yet"; s.className = "pill"; }
}

function setConnection(text, level = "") {
  const c = $("connection");
  c.textContent = text;
  c.className = `pill ${level}`;
}

function banner(text, level = "info", dismissable = false) {
  const b = el("div", { class: `banner ${level}`, role: level === "info" ? "status" : "alert" }, text);
  if (dismissable || level !== "bad") b.append(" ", el("button", { type: "button", class: "secondary", onclick: () => b.remove() }, "Dismiss"));
  $("banners").prepend(b);
  while ($("banners").children.length > 4) $("banners").lastChild.remove();
}

function fatal(text) {
  $("fatal").textContent = text;
  $("fatal").hidden = false;
  $("loading").hidden = true;
  setConnection("Disconnected", "bad");
}

// ---- actions ------------------------------------------------------------------------------------------------
function go(i) {
  if (i < 0 || i >= exam.questions.length) return;
  const q = exam.questions[exam.index];
  if (q) exam.spent[q.id] = spentOn(q.id);
  exam.index = i;
  exam.shownAt = performance.now();
  render();
}

function choose(i) {
  const q = exam.questions[exam.index];
  const o = q?.options[i];
  if (!o) return;
  const a = answerOf(q.id);
  if (a?.choice === o.id) return;
  answer(q.id, o.id, Boolean(a?.marked));
}

function toggleMark() {
  const q = exam.questions[exam.index];
  if (!q) return;
  const a = answerOf(q.id);
  answer(q.id, a?.choice ?? null, !a?.marked);
}

$("prev").addEventListener("click", () => go(exam.index - 1));
$("next").addEventListener("click", () => {
  go(exam.adaptive === null ? exam.index + 1 : exam.questions.findIndex((q) => q.id === exam.adaptive));
});
$("mark").addEventListener("click", toggleMark);
$("clear").addEventListener("click", () => {
  const q = exam.questions[exam.index];
  const a = answerOf(q.id);
  answer(q.id, null, Boolean(a?.marked));
});

$("submit").addEventListener("click", () => {
  const answered = exam.questions.filter((q) => answerOf(q.id)?.choice).length;
  const marked = exam.questions.filter((q) => answerOf(q.id)?.marked).length;
  const pending = outbox.pendingQuestions().size;
  if (exam.adaptive !== null) {
    $("confirm-summary").textContent = `You answered ${answered} questions of this adaptive test. It ends by itself when it has ` +
      `measured your level; submitting now ends it with the answers given so far` + (pending ? ` (${pending} not yet saved, sent first)` : "") + ".";
    $("confirm").showModal();
    return;
  }
  $("confirm-summary").textContent = `You answered ${answered} of ${exam.questions.length} questions` +
    (marked ? `; ${marked} marked for review` : "") + (pending ? `; ${pending} not yet saved (they are sent first)` : "") + ".";
  $("confirm").showModal();
});
$("confirm").addEventListener("close", () => {
  if ($("confirm").returnValue !== "submit" || exam.status !== "active") return;
  if (!outbox.items.some((m) => m.type === "submit")) outbox.add({ type: "submit" });
  $("submit").disabled = true;
  $("submit").textContent = "Submitting…";
  pump();
});

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || $("exam").hidden || $("confirm").open) return;
  if (!$("fullscreen").hidden || !$("elsewhere").hidden) return;
  if (e.target.matches?.("input, textarea, select")) return;
  const k = e.key.toLowerCase();
  const index = "1234".indexOf(k) >= 0 ? "1234".indexOf(k) : "abcd".indexOf(k);
  if (k.length === 1 && index >= 0) { choose(index); e.preventDefault(); }
  else if (exam.adaptive !== null) {
    // no previous, no mark, no skip: N and → only come back to the current item from an earlier one
    if (k === "arrowright" || k === "n") { go(exam.questions.findIndex((q) => q.id === exam.adaptive)); e.preventDefault(); }
  }
  else if (k === "arrowright" || k === "n") { go(exam.index + 1); e.preventDefault(); }
  else if (k === "arrowleft" || k === "p") { go(exam.index - 1); e.preventDefault(); }
  else if (k === "m") { toggleMark(); e.preventDefault(); }
});

// ---- anti-cheat signals (protocol section 12) -----------------------------------------------------------------
document.addEventListener("visibilitychange", () => report(document.visibilityState === "hidden" ? "tab_hidden" : "tab_visible"));
let blurred = false;
window.addEventListener("blur", () => {
  // a tab switch fires both blur and visibilitychange: count it once, as tab_hidden
  setTimeout(() => { if (document.visibilityState !== "hidden" && !document.hasFocus() && !blurred) { blurred = true; report("blur"); } }, 150);
});
window.addEventListener("focus", () => { if (blurred) { blurred = false; report("focus"); } });
for (const [name, kind] of [["copy", "copy"], ["paste", "paste"], ["contextmenu", "context_menu"]]) {
  document.addEventListener(name, (e) => { if (exam.status === "active" || exam.status === "paused") { e.preventDefault(); report(kind); } });
}

let wasFullscreen = false;
function enforceFullscreen() {
  const needed = document.fullscreenEnabled && !document.fullscreenElement && (exam.status === "active" || exam.status === "paused");
  $("fullscreen").hidden = !needed;
  if (needed) $("fs-enter").focus();
}
document.addEventListener("fullscreenchange", () => {
  if (document.fullscreenElement) { if (wasFullscreen === "left") report("fullscreen_enter"); wasFullscreen = true; }
  else if (wasFullscreen === true && exam.status !== "finished") { wasFullscreen = "left"; report("fullscreen_exit"); }
  enforceFullscreen();
});
$("fs-enter").addEventListener("click", () => {
  document.documentElement.requestFullscreen().catch(() => {
    $("fullscreen").hidden = true; // the browser will not (an embedded view, a phone): carry on without
    banner("Full screen is not available in this browser; switching away is still recorded.", "warn");
  });
});
$("take-back").addEventListener("click", () => { $("elsewhere").hidden = true; connect(); });

window.addEventListener("offline", () => { setConnection("Offline: answers are kept on this device", "warn"); dropConnection(); });
window.addEventListener("online", () => { backoff.reset(); if (!ws && exam.status !== "finished") connect(); });

// ---- the end: the score from the `finished` frame, the review over REST ---------------------------------------
const REASONS = { student: "You submitted the exam.", timeout: "The time ran out.", anticheat: "The exam was submitted after too many violations.",
  forced: "Your proctor submitted the exam.", proctor: "Your proctor ended the exam.",
  completed: "The adaptive test has measured your level precisely enough and ended itself." };

async function finish(status, reason, result, ability) {
  if (exam.status === "finished") return;
  exam.status = "finished";
  outbox.clear(); // whatever is left was not stored (protocol section 13)
  saveSession(sid, { finished: true });
  clearInterval(heartbeatTimer);
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  $("fullscreen").hidden = true;
  $("exam").hidden = true;
  $("loading").hidden = true;
  $("result").hidden = false;
  setConnection("Finished", "ok");
  renderTimer();
  renderSaveStatus();
  $("save-status").textContent = "Submitted";
  $("result-reason").textContent = REASONS[reason] || `The attempt is ${status}.`;
  if (result) showScore(result);
  if (ability) showAbility(ability, result);
  $("result").focus();
  try {
    const review = await api("GET", `/api/sessions/${sid}/result`, { token });
    showScore(review);
    if (review.ability) showAbility({ ...ability, ...review.ability }, review);
    showReview(review.questions);
  } catch (err) {
    $("review-status").textContent = `The review could not be loaded: ${err.message}`;
  }
}

function showScore(r) {
  $("result-score").textContent = `${r.score} / ${r.max_score}`;
  $("result-counts").textContent = `${r.correct} correct · ${r.wrong} wrong · ${r.skipped} skipped`;
  $("result-topics").tBodies[0].replaceChildren(...Object.entries(r.topics).map(([topic, t]) => el("tr", {},
    el("th", { scope: "row" }, topic.replaceAll("-", " ")), el("td", {}, `${t.score} / ${t.max_score}`),
    el("td", {}, t.correct), el("td", {}, t.wrong), el("td", {}, t.skipped))));
}

/** Adaptive tests: the ability estimate (θ on the standard normal scale, its standard error, the scaled score
 * 400 + 100·θ clipped to 0..800, docs/adaptive.md). */
function showAbility(a, r) {
  $("ability-scaled").textContent = a.scaled;
  $("ability-theta").textContent = Number(a.theta).toFixed(2);
  $("ability-se").textContent = `± ${Number(a.se).toFixed(2)}`;
  // a stored result does not repeat the count; its scored items are the ones it counts right, wrong or skipped
  const items = a.items ?? (r ? r.correct + r.wrong + r.skipped : null);
  $("ability-items").textContent = items === null ? "–" : String(items) + (a.pretest_items ? ` (+${a.pretest_items} unscored)` : "");
  $("result-ability").hidden = false;
}

function showReview(questions) {
  $("review-status").textContent = "";
  $("review").replaceChildren(...questions.map((q) => {
    const text = (id) => q.options.find((o) => o.id === id)?.text ?? id;
    const verdict = q.is_correct === null ? el("span", { class: "muted" }, "Skipped") :
      el("span", { class: q.is_correct ? "correct" : "wrong" }, q.is_correct ? "Correct" : "Wrong");
    return el("li", {}, el("p", {}, q.text), el("p", {}, verdict, ` (${q.marks > 0 ? "+" : ""}${q.marks})`,
      q.choice ? ` · your answer: ${text(q.choice)}` : "", ` · correct answer: ${text(q.correct)}`),
      q.explanation ? el("p", { class: "muted" }, q.explanation) : null);
  }));
}

// ---- start --------------------------------------------------------------------------------------------------
if (!/^[0-9a-f]{32}$/.test(sid || "")) fatal("This is not an exam link.");
else if (!token) fatal("This exam link has no session token. Open the link you were given (it ends in #token=…), or start from the home page.");
else connect();
