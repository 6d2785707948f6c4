// A template's analytics where a picture beats a table: the score histogram (GET /api/templates/{id}/scores),
// facility against discrimination per item (GET .../item-analysis), accuracy per topic, KR-20/KR-21.
import { api, el, loginForm, staff } from "./api.js";
import { bars, histogram, scatter } from "./charts.js";

const $ = (id) => document.getElementById(id);
let who = staff.load();
const fixed = (x, n = 2) => (x === null || x === undefined ? "–" : x.toFixed(n));

async function showSignedIn() {
  $("login").hidden = true;
  $("picker").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `${who.name} (${who.role})`;
  const { templates } = await api("GET", "/api/templates");
  $("template").replaceChildren(...templates.map((t) => el("option", { value: t.id }, `${t.name} (#${t.id})`)));
  const wanted = new URLSearchParams(location.search).get("template");
  if (wanted && templates.some((t) => String(t.id) === wanted)) $("template").value = wanted;
  if (templates.length) show(Number($("template").value));
}

async function show(tid) {
  history.replaceState(null, "", `/analytics?template=${tid}`);
  $("error").textContent = "";
  try {
    const token = who.token;
    const [scores, items, topics, rel] = await Promise.all([
      api("GET", `/api/templates/${tid}/scores`, { token }),
      api("GET", `/api/templates/${tid}/item-analysis?min_n=5`, { token }),
      api("GET", `/api/analytics/topics?template_id=${tid}`, { token }),
      api("GET", `/api/templates/${tid}/reliability`, { token })]);
    $("report").hidden = false;
    $("summary").textContent = `${scores.attempts} stored attempt(s)` +
      (scores.attempts ? `, mean score ${fixed(scores.mean, 1)} of ${scores.max_score}` : "") +
      ` · ${items.items} item(s) analysed, ${items.flagged} flagged · KR-20 ${fixed(rel.kr20)} · KR-21 ${fixed(rel.kr21)}`;
    $("chart-scores").replaceChildren(histogram({ scores: scores.scores, lo: scores.min_score, hi: scores.max_score,
      label: `Score histogram over ${scores.attempts} attempts` }));
    $("chart-items").replaceChildren(scatter({ label: `Facility against discrimination for ${items.items} items`,
      xTitle: "facility", yTitle: "discrimination",
      points: items.questions.map((q) => ({ x: q.facility, y: q.discrimination, flagged: q.flags.length > 0,
        label: `Q${q.question_id} (${q.topic})${q.flags.length ? ` ${q.flags.join(", ")}` : ""}` })) }));
    $("chart-topics").replaceChildren(bars({ label: "Accuracy per topic",
      items: topics.topics.map((t) => ({ label: t.topic.replaceAll("-", " "), value: t.accuracy })) }));
    $("flagged").tBodies[0].replaceChildren(...items.questions.filter((q) => q.flags.length).map((q) => el("tr", {},
      el("th", { scope: "row" }, `#${q.question_id}`), el("td", {}, q.topic), el("td", {}, q.n), el("td", {}, fixed(q.facility)),
      el("td", {}, fixed(q.discrimination)), el("td", {}, q.flags.join(", ")))));
  } catch (err) {
    if (err.status === 401) { staff.clear(); location.reload(); return; }
    $("error").textContent = err.message;
  }
}

loginForm((w) => { who = w; showSignedIn(); });
$("sign-out").addEventListener("click", () => { staff.clear(); location.assign("/analytics"); });
$("template-form").addEventListener("submit", (e) => { e.preventDefault(); show(Number($("template").value)); });
if (who) showSignedIn().catch((err) => { $("error").textContent = err.message; });
else $("login").hidden = false;
