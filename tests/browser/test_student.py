"""A student sits an exam in Chromium: every answer reaches PostgreSQL, through a lost network and a reload."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, expect

from storage import pg
from tests.browser.conftest import choose, enter_fullscreen, new_page, shot, start_exam
from tests.server.conftest import services


async def displayed(page: Page) -> list[dict[str, Any]]:
    """The paper as the page shows it: question ids and option ids in display order (from the page's DOM)."""
    out = []
    nav = page.locator("#navigator button")
    for i in range(await nav.count()):
        await nav.nth(i).click()
        await expect(page.locator("#q-number")).to_contain_text(f"Question {i + 1} of")
        q = int(await nav.nth(i).get_attribute("data-q") or 0)
        options = [await o.get_attribute("data-option") for o in await page.locator("#options .option").all()]
        out.append({"id": q, "options": options})
    return out


def seconds(timer: str | None) -> int:
    """The timer's text ("9:58", "1:02:03", "Paused · 4:59") in seconds."""
    assert timer is not None
    parts = [int(p) for p in timer.rsplit(" ", 1)[-1].split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


async def stored_answers(client: TestClient[Any, Any], sid: str) -> dict[int, str | None]:
    """The session's saved answers in Redis (the hub's own store), question id -> choice."""
    loaded = await services(client).store.load(sid)
    assert loaded is not None
    return {q: a.choice for q, a in loaded.state.answers.items()}


async def test_a_student_sits_a_whole_exam_and_it_lands_in_postgresql(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    page = await new_page(browser)
    sid = await start_exam(page, base, "Asha")
    await shot(page, "student-question")
    paper = await displayed(page)
    assert len(paper) == 10
    chosen: dict[int, str] = {}
    # answer eight by clicking, one by keyboard (3 = the third option), leave one blank; mark one for review
    for n, q in enumerate(paper[:8], start=1):
        await choose(page, n, n % 4)
        chosen[q["id"]] = q["options"][n % 4]
    await page.locator("#navigator button").nth(8).click()
    await page.keyboard.press("3")
    chosen[paper[8]["id"]] = paper[8]["options"][2]
    await page.keyboard.press("m")
    await expect(page.locator("#mark")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    await expect(page.locator("#counts")).to_have_text("9 answered · 1 marked · 1 unanswered")
    await expect(page.locator("#navigator button.answered")).to_have_count(9)
    await shot(page, "student-navigator")

    await page.get_by_role("button", name="Submit the exam").click()
    await expect(page.locator("#confirm-summary")).to_contain_text(
        "You answered 9 of 10 questions; 1 marked for review"
    )
    await shot(page, "student-confirm")
    await page.locator("#confirm-submit").click()
    await expect(page.locator("#result")).to_be_visible()
    await expect(page.locator("#review li")).to_have_count(10)
    await shot(page, "student-result")

    s = services(client)
    assert await s.flusher.flush_once() == 1
    rows = await pg.fetch_responses(s.pool, sid)
    assert {r["question_id"]: r["choice"] for r in rows if r["choice"] is not None} == chosen
    attempt = await s.pool.fetchrow("SELECT * FROM test_attempts WHERE session_id = $1", sid)
    assert attempt["status"] == "submitted" and attempt["reason"] == "student"
    assert await page.locator("#result-score").text_content() == f"{attempt['score']} / {attempt['max_score']}"
    marked = [r["question_id"] for r in rows if r["marked_for_review"]]
    assert marked == [paper[8]["id"]]
    # the page's outbox is empty and the session is remembered as finished
    storage = await page.evaluate("() => ({...localStorage})")
    assert json.loads(storage[f"examhub:outbox:{sid}"]) == []
    assert json.loads(storage[f"examhub:session:{sid}"])["finished"] is True


async def test_offline_answers_wait_in_the_outbox_and_are_stored_when_the_network_returns(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    page = await new_page(browser)
    sid = await start_exam(page, base, "Ravi")
    paper = await displayed(page)
    await choose(page, 1, 0)
    await expect(page.locator("#save-status")).to_have_text("All answers saved")

    await page.context.set_offline(True)
    await expect(page.locator("#connection")).to_contain_text("Offline")
    for n in (2, 3, 4):
        await choose(page, n, 1)
    await expect(page.locator("#save-status")).to_have_text("3 not yet saved")
    await expect(page.locator("#answer-status")).to_have_text("Not yet saved")
    await expect(page.locator("#navigator button.unsaved")).to_have_count(3)
    await shot(page, "student-offline")
    assert await stored_answers(client, sid) == {paper[0]["id"]: paper[0]["options"][0]}  # none of the three yet

    await page.context.set_offline(False)
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    await expect(page.locator("#navigator button.unsaved")).to_have_count(0)
    expected = {
        paper[0]["id"]: paper[0]["options"][0],
        **{paper[n - 1]["id"]: paper[n - 1]["options"][1] for n in (2, 3, 4)},
    }
    assert await stored_answers(client, sid) == expected
    storage = await page.evaluate("() => ({...localStorage})")
    assert json.loads(storage[f"examhub:outbox:{sid}"]) == []


async def test_a_crash_and_a_reload_mid_exam_lose_nothing(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    page = await new_page(browser)
    sid = await start_exam(page, base, "Meera")
    paper = await displayed(page)
    await choose(page, 1, 3)
    await choose(page, 2, 2)
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    # two more answers while offline, then the tab dies before it could send them
    context = page.context
    await context.set_offline(True)
    await expect(page.locator("#connection")).to_contain_text("Offline")
    await choose(page, 3, 1)
    await choose(page, 4, 0)
    await page.locator("#mark").click()
    await expect(page.locator("#save-status")).to_have_text("2 not yet saved")
    await page.close()
    await context.set_offline(False)
    expected = {paper[0]["id"]: paper[0]["options"][3], paper[1]["id"]: paper[1]["options"][2]}
    assert await stored_answers(client, sid) == expected

    # the link without its token: the token, the seq counter and the outbox come from localStorage
    page = await context.new_page()
    await page.goto(f"{base}/exam/{sid}")
    await enter_fullscreen(page)
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    expected |= {paper[2]["id"]: paper[2]["options"][1], paper[3]["id"]: paper[3]["options"][0]}
    assert await stored_answers(client, sid) == expected

    # a plain reload mid-exam: the same answers and mark are shown again, nothing is sent twice
    before = await page.locator("#timer").text_content()
    await page.reload()
    await enter_fullscreen(page)
    await expect(page.locator("#connection")).to_have_text("Connected")
    await expect(page.locator("#navigator button.answered")).to_have_count(4)
    await expect(page.locator("#navigator button.marked")).to_have_count(1)
    await page.locator("#navigator button").nth(3).click()
    await expect(page.locator("#options .option[aria-checked='true']")).to_have_attribute(
        "data-option", paper[3]["options"][0]
    )
    await expect(page.locator("#mark")).to_have_attribute("aria-pressed", "true")
    assert await stored_answers(client, sid) == expected
    loaded = await services(client).store.load(sid)
    assert loaded is not None and loaded.state.answers[paper[3]["id"]].marked is True
    assert loaded.epoch == 3  # three connections: the first page, the new tab, the reload
    after = await page.locator("#timer").text_content()
    assert seconds(after) <= seconds(before)  # the server's clock, not restarted
    await shot(page, "student-after-reload")


async def test_the_exam_page_fits_a_phone_and_works_by_keyboard(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    page = await new_page(browser, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    sid = await start_exam(page, base, "Diya")
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    paper = await displayed(page)
    await page.locator("#navigator button").first.click()
    await page.keyboard.press("b")  # the second option
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#q-number")).to_have_text("Question 2 of 10")
    await page.keyboard.press("4")
    await page.keyboard.press("n")
    await page.keyboard.press("m")
    await page.keyboard.press("p")
    await expect(page.locator("#q-number")).to_have_text("Question 2 of 10")
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    await shot(page, "student-phone", full_page=False)
    loaded = await services(client).store.load(sid)
    assert loaded is not None
    answers = loaded.state.answers
    assert answers[paper[0]["id"]].choice == paper[0]["options"][1]
    assert answers[paper[1]["id"]].choice == paper[1]["options"][3]
    assert answers[paper[2]["id"]].choice is None and answers[paper[2]["id"]].marked is True
