// REST helpers shared by the pages: JSON in, JSON out, examhub's error shape turned into an Error.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network", "the server cannot be reached; check the connection and try again");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || "error", data.message || response.statusText);
  return data;
}

/** The WebSocket URL of a path on this origin (same origin: the hub's Origin check lets it through). */
export function wsUrl(path) {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

/** Exponential backoff with jitter, as docs/protocol.md section 9 suggests: 0.5 s doubling to 30 s, a random
 * wait between half and all of the current delay. */
export class Backoff {
  constructor(first = 500, max = 30000) { this.first = first; this.max = max; this.delay = first; }
  next() {
    const wait = this.delay / 2 + Math.random() * (this.delay / 2);
    this.delay = Math.min(this.max, this.delay * 2);
    return wait;
  }
  reset() { this.delay = this.first; }
}

/** "mm:ss", or "h:mm:ss" from an hour up. */
export function clock(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(sec).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** Build an element: el("li", {class: "x", onclick: f}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the pages' CSP, unlike a style attribute
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

/** Staff sign-in shared by the dashboard and the analytics page (kept for this tab only). */
export const staff = {
  key: "examhub:staff",
  load() { try { return JSON.parse(sessionStorage.getItem(this.key)); } catch { return null; } },
  save(v) { sessionStorage.setItem(this.key, JSON.stringify(v)); },
  clear() { sessionStorage.removeItem(this.key); },
  async login(username, password) {
    const out = await api("POST", "/api/auth/login", { body: { username, password } });
    if (out.role !== "proctor" && out.role !== "admin") throw new ApiError(403, "forbidden", "this page needs a proctor or admin account");
    const me = await api("GET", "/api/users/me", { token: out.token });
    const who = { token: out.token, role: out.role, name: me.display_name, user_id: out.user_id };
    this.save(who);
    return who;
  },
};

/** Wire a login form (#login-form with #username, #password, #login-error) to `staff.login`; call `done(who)`. */
export function loginForm(done) {
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("login-error");
    error.textContent = "";
    try {
      done(await staff.login(form.username.value.trim(), form.password.value));
    } catch (err) {
      error.textContent = err.message;
    }
  });
}
