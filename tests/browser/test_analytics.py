"""Charts of a finished exam: the score distribution endpoint, the dashboard's results and the analytics page."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, expect

from storage import pg
from storage import users as repo
from tests.browser.conftest import new_page, shot
from tests.server.conftest import bearer, services, student, token_for


async def finished_exam(client: TestClient[Any, Any], students: int = 4) -> int:
    """A template of our own (30 of the bank's 240 questions, so that papers overlap) whose students each answered
    some questions, submitted, and were stored."""
    s = services(client)
    bank = await s.pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    tid = int(await s.pool.fetchval(
        "INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, 'Charted exam', $2, $3) RETURNING id",
        f"charted-{secrets.token_hex(4)}", bank, {"count": 30, "duration_s": 600},
    ))  # fmt: skip
    for n in range(students):
        st = await student(client, tid)
        await st.connect()
        # even students answer right, odd ones wrong, 6 / 14 / 22 / 30 questions: scores 24, -14, 88, -30 spread over
        # the histogram whatever the shuffle (answering by display position made them cluster near 0 by chance)
        shown = st.questions()[: 8 * n + 6]
        key = {q.id: q.correct for q in await pg.fetch_questions(s.pool, [q["id"] for q in shown])}
        for q in shown:
            ids = [o["id"] for o in q["options"]]
            choice = key[q["id"]] if n % 2 == 0 else next(o for o in ids if o != key[q["id"]])
            assert (await st.answer(q["id"], choice))["type"] == "ack"
        st.seq += 1
        await st.send({"type": "submit", "seq": st.seq})
        while (await st.recv())["type"] != "finished":
            pass
    assert await s.flusher.flush_once() == students
    return tid


async def test_the_score_distribution_counts_every_stored_attempt(client: TestClient[Any, Any]) -> None:
    tid = await finished_exam(client)
    s = services(client)
    stored = await s.pool.fetch("SELECT score, max_score, min_score FROM test_attempts WHERE template_id = $1", tid)
    staff = await token_for(client, "admin")
    r = await client.get(f"/api/templates/{tid}/scores", headers=bearer(staff))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["attempts"] == 4 and body["max_score"] == 120 and body["min_score"] == -30
    assert {e["score"]: e["count"] for e in body["scores"]} == Counter(a["score"] for a in stored)
    assert [e["score"] for e in body["scores"]] == sorted(e["score"] for e in body["scores"])
    assert abs(body["mean"] - sum(a["score"] for a in stored) / 4) < 1e-9

    missing = await client.get("/api/templates/9000000000/scores", headers=bearer(staff))
    assert missing.status == 404 and (await missing.json())["error"] == "template_not_found"
    student_token = await token_for(client, "student")
    refused = await client.get(f"/api/templates/{tid}/scores", headers=bearer(student_token))
    assert refused.status == 403 and (await refused.json())["error"] == "forbidden"
    empty = await client.get("/api/templates/1/scores", headers=bearer(staff))
    assert empty.status == 200


async def test_the_dashboard_and_the_analytics_page_chart_a_finished_exam(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    tid = await finished_exam(client)
    s = services(client)
    username, password = f"admin-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    await repo.create_user(s.pool, username, password, "Dr Rao", role="admin")
    page = await new_page(browser, viewport={"width": 1400, "height": 900})
    await page.goto(f"{base}/proctor?template={tid}")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#feed-state")).to_have_text("Live")
    await expect(page.locator("#results-summary")).to_contain_text("4 stored attempt(s)")
    await expect(page.locator("#chart-scores svg[role=img]")).to_have_attribute(
        "aria-label", "Score distribution of 4 attempts"
    )
    heights = [float(await b.get_attribute("height") or 0) for b in await page.locator("#chart-scores rect.bar").all()]
    assert sum(1 for h in heights if h > 0) >= 2  # four different scores fall in more than one bar
    await expect(page.locator("#chart-topics rect.bar").first).to_be_attached()
    await shot(page, "proctor-results")

    # the analytics page shares the sign-in of this tab
    await page.goto(f"{base}/analytics?template={tid}")
    await expect(page.locator("#summary")).to_contain_text("4 stored attempt(s)")
    await expect(page.locator("#chart-items circle.pt").first).to_be_attached()
    points = await page.locator("#chart-items circle").count()
    items = await client.get(
        f"/api/templates/{tid}/item-analysis?min_n=5", headers=bearer(await token_for(client, "admin"))
    )
    with_discrimination = [q for q in (await items.json())["questions"] if q["discrimination"] is not None]
    assert points == len(with_discrimination) > 0
    await shot(page, "analytics")
