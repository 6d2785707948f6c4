"""A proctor runs an exam from the dashboard in a second browser context while a student sits it."""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, expect

from storage import users as repo
from tests.browser.conftest import choose, new_page, shot, start_exam
from tests.browser.test_student import seconds
from tests.conftest import template_id
from tests.server.conftest import bearer, services, token_for


async def proctor_login(client: TestClient[Any, Any], browser: Browser, base: str, slug: str) -> tuple[Page, int]:
    """A proctor with a password, assigned to the exam by an admin, signed in on the dashboard and watching it."""
    s = services(client)
    tid = await template_id(s.pool, slug)
    username, password = f"proctor-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    user = await repo.create_user(s.pool, username, password, "Mrs Iyer", role="proctor")
    admin = await token_for(client, "admin")
    r = await client.post("/api/proctor/assignments", json={"user_id": str(user.id), "template_id": tid},
                          headers=bearer(admin))  # fmt: skip
    assert r.status == 201, await r.text()
    page = await new_page(browser, viewport={"width": 1400, "height": 900})
    await page.goto(f"{base}/proctor")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_have_text("Mrs Iyer (proctor)")
    await page.get_by_label("Exam to watch").select_option(str(tid))
    await page.get_by_role("button", name="Watch").click()
    await expect(page.locator("#feed-state")).to_have_text("Live")
    return page, tid


async def test_a_tab_switch_reaches_the_proctor_dashboard_within_a_second(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    student = await new_page(browser)
    sid = await start_exam(student, base, "Kabir")
    proctor, _ = await proctor_login(client, browser, base, "biology-quick-10")
    row = proctor.locator(f"#grid tr[data-session='{sid}']")
    await expect(row).to_contain_text("online")
    await expect(row.locator("td.events")).not_to_contain_text("tab_hidden")
    await choose(student, 1, 0)
    await expect(row).to_contain_text("1/10")

    # the student switches to another tab: the page reports tab_hidden (protocol section 12)
    await student.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "hidden", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(row.locator("td.events")).to_contain_text("tab_hidden 1", timeout=1000)
    await expect(proctor.locator(f"#alerts li[data-session='{sid}']")).to_contain_text("1 x tab_hidden")
    await student.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "visible", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    await expect(student.locator("#banners")).to_contain_text("Leaving the exam window is recorded")
    await expect(row.locator("td.events")).to_contain_text("tab_visible 1")
    await shot(proctor, "proctor-dashboard")
    await shot(student, "student-warning")
    loaded = await services(client).store.load(sid)
    assert loaded is not None and loaded.state.violations == 1


async def test_the_student_timer_follows_an_extension_and_a_pause(
    client: TestClient[Any, Any], browser: Browser, base: str
) -> None:
    student = await new_page(browser)
    sid = await start_exam(student, base, "Zoya")
    proctor, _ = await proctor_login(client, browser, base, "biology-quick-10")
    timer = student.locator("#timer")
    assert 9 * 60 < seconds(await timer.text_content()) <= 10 * 60

    await proctor.get_by_role("button", name="Act on Zoya").click()
    await proctor.get_by_label("Reason (for the audit trail").fill("late start in hall B")
    await proctor.get_by_label("Seconds (negative shortens)").fill("1200")
    await proctor.get_by_role("button", name="Extend").click()
    await expect(proctor.locator("#action-result")).to_have_text("extend: done for Zoya")
    await expect(timer).to_have_text(re.compile(r"^(2[89]|30):\d\d$"))
    await expect(student.locator("#banners")).to_contain_text("Your proctor changed your time.")

    await proctor.get_by_role("button", name="Pause").click()
    await expect(timer).to_contain_text("Paused")
    await expect(student.locator("#options .option").first).to_be_disabled()
    paused_at = seconds(await timer.text_content())
    await expect(proctor.locator(f"#grid tr[data-session='{sid}']")).to_contain_text("paused")
    await shot(student, "student-paused")
    await shot(proctor, "proctor-paused")
    await student.wait_for_timeout(1500)
    assert seconds(await timer.text_content()) == paused_at  # a paused clock stands still

    await proctor.get_by_role("button", name="Resume").click()
    await expect(timer).not_to_contain_text("Paused")
    await expect(student.locator("#options .option").first).to_be_enabled()
    assert paused_at - 3 <= seconds(await timer.text_content()) <= paused_at
    await proctor.get_by_label("Message to this student").fill("Ten minutes were added for the late start.")
    await proctor.get_by_role("button", name="Send message").click()
    await expect(student.locator("#banners")).to_contain_text("Ten minutes were added")
    loaded = await services(client).store.load(sid)
    assert loaded is not None and loaded.state.status.value == "active"
