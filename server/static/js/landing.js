// The landing page: list the tests, create a guest, start a session, go to its exam page.
import { api, el } from "./api.js";
import { saveSession, knownSessions } from "./store.js";

const list = document.getElementById("templates");
const form = document.getElementById("start-form");
const error = document.getElementById("start-error");

async function loadTemplates() {
  try {
    const { templates } = await api("GET", "/api/templates");
    list.replaceChildren(...templates.map((t, i) => {
      const adaptive = Boolean(t.config?.adaptive); // docs/adaptive.md: one item at a time, `questions` is the most
      return el("label", { class: "row choice-label" },
        el("input", { type: "radio", name: "template", value: t.id, required: true, checked: i === 0, "data-slug": t.slug,
          "data-adaptive": adaptive ? "true" : false }),
        ` ${t.name} `, adaptive ? el("span", { class: "pill current", title: "Each question is chosen from your answers so far; " +
          "answers are final and the test ends when it has measured your level" }, "Adaptive") : null,
        el("span", { class: "muted" }, `(${adaptive ? "up to " : ""}${t.questions} questions, ${Math.round(t.duration_s / 60)} min)`));
    }));
    if (!templates.length) list.replaceChildren(el("p", { class: "muted" }, "No tests are open."));
  } catch (err) {
    list.replaceChildren(el("p", { class: "error" }, err.message));
  }
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  error.textContent = "";
  const name = form.display_name.value.trim();
  const chosen = form.querySelector("input[name=template]:checked");
  if (!name || !chosen) { error.textContent = "Give your name and choose a test."; return; }
  form.querySelector("button").disabled = true;
  try {
    const guest = await api("POST", "/api/auth/guest", { body: { display_name: name } });
    const started = await api("POST", "/api/sessions", { token: guest.token, body: { template_id: Number(chosen.value) } });
    saveSession(started.session_id, { token: started.token, name: started.template.name,
      ...(started.adaptive ? { adaptive: true, questions: started.questions } : {}) });
    location.assign(`/exam/${started.session_id}#token=${encodeURIComponent(started.token)}`);
  } catch (err) {
    error.textContent = err.message;
    form.querySelector("button").disabled = false;
  }
});

const resumable = knownSessions();
if (resumable.length) {
  document.getElementById("resume").hidden = false;
  document.getElementById("resume-list").replaceChildren(...resumable.map(([sid, s]) =>
    el("li", {}, el("a", { href: `/exam/${sid}` }, s.name || sid))));
}
loadTemplates();
