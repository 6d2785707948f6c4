"""A student sits an adaptive test in Chromium (docs/protocol.md section 18): one item at a time, earlier items
read-only, the test ending itself, the ability on the result page and in PostgreSQL; a reload, a crash with an
unsent answer and a stale answer in the outbox mid-test.

Item parameters change what every adaptive test in a database does, so these tests run a hub over a database of
their own (the `client` fixture below overrides the shared one; conftest's `base` and `browser` follow it).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, expect

from server.app import create_app
from server.settings import Settings
from storage import pg
from storage.embedded import free_port
from tests.browser.conftest import enter_fullscreen, new_page, shot, start_exam
from tests.server.conftest import ClientFactory, bearer, services, token_for
from tests.server.test_adaptive import calibrate_by_level, template_body

THETA = 0.6  # the simulated student's true ability


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings, own_database_url: str) -> TestClient[Any, Any]:
    """The hub over a database of this test's own, on a port known before the app (its ws_url is its own)."""
    port = free_port()
    app = create_app(replace(settings, database_url=own_database_url, port=port))
    return await aiohttp_client(app, server_kwargs={"port": port})


class Bank:
    """The calibrated demo bank and an adaptive template over it: answer keys and item parameters for the
    simulated student, who answers right with the 2PL probability at THETA."""

    def __init__(self, slug: str, keys: dict[int, str], params: dict[int, tuple[float, float]]) -> None:
        self.slug = slug
        self.keys = keys
        self.params = params
        self.rng = random.Random(11)

    def right(self, q: int) -> bool:
        a, b = self.params[q]
        return self.rng.random() < 1 / (1 + math.exp(-a * (THETA - b)))


@pytest.fixture
async def bank(client: TestClient[Any, Any]) -> Bank:
    s = services(client)
    bank_id = await calibrate_by_level(client)
    body = template_body(bank_id)  # up to 20 items, stop at SE <= 0.45 after at least 4, a pretest item third
    r = await client.post("/api/templates", json=body, headers=bearer(await token_for(client, "admin")))
    assert r.status == 201, await r.text()
    keys = {r["id"]: r["correct"] for r in await s.pool.fetch("SELECT id, correct FROM questions")}
    params = {r["question_id"]: (r["a"], r["b"]) for r in await s.pool.fetch("SELECT * FROM item_parameters")}
    return Bank(body["slug"], keys, params)


async def current(page: Page) -> int:
    """The current item's question id, as the navigator marks it."""
    return int(await page.locator("#navigator button.current").get_attribute("data-q") or 0)


async def given(page: Page) -> list[int]:
    return [int(await b.get_attribute("data-q") or 0) for b in await page.locator("#navigator button").all()]


async def answer_current(page: Page, bank: Bank, by_key: bool) -> tuple[int, str]:
    """Answer the current item as the simulated student would, by a click or a key; returns (question, option)."""
    q = await current(page)
    options = [await o.get_attribute("data-option") or "" for o in await page.locator("#options .option").all()]
    key = bank.keys[q]
    choice = key if bank.right(q) else next(o for o in options if o != key)
    position = options.index(choice)
    await expect(page.locator("#options .option").nth(position)).to_be_enabled()
    if by_key:
        await page.keyboard.press("1234"[position] if position % 2 else "ABCD"[position])
    else:
        await page.locator("#options .option").nth(position).click()
    return q, choice


async def next_item_or_result(page: Page, items: int) -> bool:
    """Wait for the `item` frame's question (the navigator grows) or the result page; True when finished."""
    await page.wait_for_function(
        "n => document.querySelectorAll('#navigator li').length > n || !document.getElementById('result').hidden",
        arg=items,
    )
    return await page.locator("#result").is_visible()


async def test_the_landing_page_marks_adaptive_tests(
    client: TestClient[Any, Any], browser: Browser, base: str, bank: Bank
) -> None:
    page = await new_page(browser)
    await page.goto(f"{base}/")
    adaptive = page.locator(f"input[data-slug='{bank.slug}']")
    await expect(adaptive).to_have_attribute("data-adaptive", "true")
    label = page.locator("label.choice-label", has=adaptive)
    await expect(label).to_contain_text("Adaptive")
    await expect(label).to_contain_text("(up to 20 questions, 15 min)")
    fixed = page.locator("label.choice-label", has=page.locator("input[data-slug='biology-quick-10']"))
    await expect(fixed).not_to_contain_text("Adaptive")
    await expect(fixed).to_contain_text("(10 questions,")
    await shot(page, "adaptive-landing")


async def test_a_student_sits_a_whole_adaptive_test_until_it_ends_itself(
    client: TestClient[Any, Any], browser: Browser, base: str, bank: Bank
) -> None:
    page = await new_page(browser)
    sid = await start_exam(page, base, "Kiran", slug=bank.slug)
    await expect(page.locator("#q-number")).to_have_text("Question 1 (adaptive, up to 20)")
    for hidden in ("#prev", "#mark", "#clear", "#next"):  # no previous, no marking, no skip, no clearing
        await expect(page.locator(hidden)).to_be_hidden()
    await expect(page.locator("#navigator button")).to_have_count(1)

    chosen: dict[int, str] = {}
    finished = False
    while not finished:
        n = len(chosen) + 1
        await expect(page.locator("#q-number")).to_have_text(f"Question {n} (adaptive, up to 20)")
        q, choice = await answer_current(page, bank, by_key=n % 2 == 0)  # clicks and keys in turn
        chosen[q] = choice
        finished = await next_item_or_result(page, n)
        assert n <= 20
        if n == 4 and not finished:
            # an earlier item is shown read-only: its answer, no option to change it; keys change nothing
            first = next(iter(chosen))
            await page.locator("#navigator button").first.click()
            await expect(page.locator("#q-number")).to_have_text("Question 1 (adaptive, up to 20)")
            await expect(page.locator("#answer-status")).to_have_text("Saved · final")
            await expect(page.locator("#options .option:enabled")).to_have_count(0)
            await expect(page.locator("#options .option[aria-checked='true']")).to_have_attribute(
                "data-option", chosen[first]
            )
            await page.keyboard.press("2")
            await expect(page.locator("#save-status")).to_have_text("All answers saved")
            await expect(page.locator("#next")).to_have_text("Back to the current question →")
            await page.keyboard.press("n")  # back to the current item
            await expect(page.locator("#q-number")).to_have_text("Question 5 (adaptive, up to 20)")
            await expect(page.locator("#navigator button.answered")).to_have_count(4)
            await expect(page.locator("#counts")).to_have_text("4 answered · up to 20 questions")
            await shot(page, "adaptive-question")  # docs/screenshots/adaptive.png

    await expect(page.locator("#result-reason")).to_contain_text("ended itself")
    await expect(page.locator("#result-ability")).to_be_visible()
    await expect(page.locator("#review li")).to_have_count(len(chosen))
    await shot(page, "adaptive-result")

    s = services(client)
    assert await s.flusher.flush_once() == 1
    attempt = await s.pool.fetchrow("SELECT * FROM test_attempts WHERE session_id = $1", sid)
    assert attempt["status"] == "submitted" and attempt["reason"] == "completed"
    assert attempt["ability"] is not None and attempt["ability_se"] is not None
    assert attempt["ability_se"] <= 0.45 or len(chosen) == 20
    rows = await pg.fetch_responses(s.pool, sid)
    assert [r["question_id"] for r in rows] == list(chosen)  # a response per item shown, in the order shown
    assert {r["question_id"]: r["choice"] for r in rows} == chosen
    # the page shows what PostgreSQL holds (the result page read it after the flush too: reload it)
    await page.reload()
    await expect(page.locator("#result-ability")).to_be_visible()
    await expect(page.locator("#ability-scaled")).to_have_text(str(attempt["scaled_score"]))
    await expect(page.locator("#ability-theta")).to_have_text(f"{attempt['ability']:.2f}")
    await expect(page.locator("#ability-se")).to_have_text(f"± {attempt['ability_se']:.2f}")
    scored = attempt["correct"] + attempt["wrong"] + attempt["skipped"]
    assert scored == len(chosen) - 1  # the pretest item is given but not scored
    await expect(page.locator("#ability-items")).to_have_text(f"{scored} (+1 unscored)")
    await expect(page.locator("#result-score")).to_have_text(f"{attempt['score']} / {attempt['max_score']}")
    storage = await page.evaluate("() => ({...localStorage})")
    assert json.loads(storage[f"examhub:outbox:{sid}"]) == []


async def test_a_reload_a_crash_and_a_stale_answer_mid_adaptive_test(
    client: TestClient[Any, Any], browser: Browser, base: str, bank: Bank
) -> None:
    page = await new_page(browser)
    sid = await start_exam(page, base, "Noor", slug=bank.slug)
    for n in (1, 2, 3):
        await answer_current(page, bank, by_key=n == 2)
        assert not await next_item_or_result(page, n)  # at least 4 items (min_items)
    before, now = await given(page), await current(page)
    assert len(before) == 4 and now == before[-1]

    # a reload shows the same answered items and the same current item
    await page.reload()
    await enter_fullscreen(page)
    await expect(page.locator("#connection")).to_have_text("Connected")
    await expect(page.locator("#navigator button")).to_have_count(4)
    assert await given(page) == before and await current(page) == now
    await expect(page.locator("#navigator button.answered")).to_have_count(3)
    await expect(page.locator("#q-number")).to_have_text("Question 4 (adaptive, up to 20)")
    await expect(page.locator("#options .option:enabled")).to_have_count(4)
    await shot(page, "adaptive-after-reload")

    # offline: the answer waits in the outbox, the item is locked; the tab dies before it could send it
    context = page.context
    await context.set_offline(True)
    await expect(page.locator("#connection")).to_contain_text("Offline")
    q, choice = await answer_current(page, bank, by_key=False)
    await expect(page.locator("#save-status")).to_have_text("1 not yet saved")
    await expect(page.locator("#options .option:enabled")).to_have_count(0)
    await page.close()
    await context.set_offline(False)
    loaded = await services(client).store.load(sid)
    assert loaded is not None and q not in loaded.state.answers

    # a new tab: the state frame names the same current item, the outbox resends the answer, the next item comes
    page = await context.new_page()
    await page.goto(f"{base}/exam/{sid}")
    await enter_fullscreen(page)
    assert not await next_item_or_result(page, 4)
    await expect(page.locator("#save-status")).to_have_text("All answers saved")
    await expect(page.locator("#q-number")).to_have_text("Question 5 (adaptive, up to 20)")
    after = await given(page)
    assert after[:4] == before and await current(page) == after[4]
    loaded = await services(client).store.load(sid)
    assert loaded is not None and loaded.state.answers[q].choice == choice

    # a stale answer to an earlier item in the outbox (a client bug): refused not_current, dropped, the page
    # reads the current item again and the test goes on. Written while no exam page is open (an open one would
    # write its own outbox over it, for the fullscreen_exit event of the reload, say)
    first = loaded.state.answers[before[0]].choice
    other = next(o for o in "abcd" if o != first)
    stale = {"type": "answer", "q": before[0], "choice": other, "marked": False, "time_ms": 1000}
    await page.close()
    page = await context.new_page()
    await page.goto(f"{base}/")
    await page.evaluate(
        """([sid, m]) => {
             const seq = Number(localStorage.getItem(`examhub:seq:${sid}`)) + 1;
             localStorage.setItem(`examhub:outbox:${sid}`, JSON.stringify([{...m, seq}]));
           }""",
        [sid, stale],
    )
    sent: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(json.loads(f))))
    received: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: received.append(json.loads(f))))
    await page.goto(f"{base}/exam/{sid}")
    await enter_fullscreen(page)
    await expect(page.locator("#connection")).to_have_text("Connected")
    await page.wait_for_function(f"() => localStorage.getItem('examhub:outbox:{sid}') === '[]'")
    answers = [f for f in sent if f["type"] == "answer"]  # sent once, refused as not the current item, dropped
    assert len(answers) == 1 and answers[0] == {**stale, "seq": answers[0]["seq"]}
    assert [f["code"] for f in received if f["type"] == "error"] == ["not_current"]
    assert await current(page) == after[4]
    loaded = await services(client).store.load(sid)
    assert loaded is not None and len(loaded.state.answers) == 4 and loaded.state.answers[before[0]].choice == first
    shown = await answers_shown(page)
    assert shown == [loaded.state.answers[q].choice for q in after[:4]]
    await page.keyboard.press("ArrowRight")  # back to the current item
    await expect(page.locator("#q-number")).to_have_text("Question 5 (adaptive, up to 20)")
    await answer_current(page, bank, by_key=True)
    await next_item_or_result(page, 5)
    loaded = await services(client).store.load(sid)
    assert loaded is not None and len(loaded.state.answers) == 5


async def answers_shown(page: Page) -> list[str | None]:
    """The choice the page shows for each answered item, in order (from the read-only view of each)."""
    out: list[str | None] = []
    nav = page.locator("#navigator button.answered")
    for i in range(await nav.count()):
        await nav.nth(i).click()
        await expect(page.locator("#q-number")).to_have_text(re.compile(rf"^Question {i + 1} "))
        checked = page.locator("#options .option[aria-checked='true']")
        out.append(await checked.get_attribute("data-option") if await checked.count() else None)
    return out
