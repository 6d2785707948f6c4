// What the exam page keeps in localStorage, per session, so that a reload or a crash loses nothing
// (docs/protocol.md section 13): the session token, the seq counter and the outbox of unsettled messages.
//
//   examhub:session:<sid>  {"token": "...", "name": "...", "finished": false, "adaptive": true, "questions": 20}
//                          (the last two for adaptive tests only: `questions` is the most items the test can have)
//   examhub:seq:<sid>      the last seq this browser gave out
//   examhub:outbox:<sid>   [{"type": "answer", "seq": 7, "q": 12, "choice": "d", "marked": false, "time_ms": 5400}, ...]

const key = (kind, sid) => `examhub:${kind}:${sid}`;

function read(k, fallback) {
  try {
    const v = localStorage.getItem(k);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

function write(k, v) {
  try {
    localStorage.setItem(k, JSON.stringify(v));
  } catch (err) {
    console.warn("localStorage unavailable; a reload may lose unsaved answers", err);
  }
}

export function loadSession(sid) { return read(key("session", sid), null); }
export function saveSession(sid, value) { write(key("session", sid), { ...(loadSession(sid) || {}), ...value }); }

/** Sessions started on this device that have not finished: [[sid, {token, name}], ...]. */
export function knownSessions() {
  const out = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (!k || !k.startsWith("examhub:session:")) continue;
    const s = read(k, null);
    if (s && s.token && !s.finished) out.push([k.slice("examhub:session:".length), s]);
  }
  return out;
}

/** The sequenced messages not yet settled, oldest first, written through to localStorage on every change. */
export class Outbox {
  constructor(sid) {
    this.sid = sid;
    this.items = read(key("outbox", sid), []).filter((m) => Number.isInteger(m.seq)).sort((a, b) => a.seq - b.seq);
    this.counter = Math.max(read(key("seq", sid), 0), ...this.items.map((m) => m.seq), 0);
  }
  #save() { write(key("outbox", this.sid), this.items); write(key("seq", this.sid), this.counter); }
  /** Give `message` the next seq, keep it, and return it. */
  add(message) {
    this.counter += 1;
    const m = { ...message, seq: this.counter };
    this.items.push(m);
    this.#save();
    return m;
  }
  remove(seq) { this.items = this.items.filter((m) => m.seq !== seq); this.#save(); }
  /** After a `state` frame: what was stored (seq <= last_seq) leaves, and the counter moves past it. */
  settle(lastSeq) {
    this.items = this.items.filter((m) => m.seq > lastSeq);
    this.counter = Math.max(this.counter, lastSeq);
    this.#save();
  }
  clear() { this.items = []; this.#save(); }
  get head() { return this.items[0]; }
  get length() { return this.items.length; }
  /** Question ids with an answer still waiting for its ack. */
  pendingQuestions() { return new Set(this.items.filter((m) => m.type === "answer").map((m) => m.q)); }
}
