"""Playwright (async API) driving Debian's Chromium against a real hub.

The hub is pytest-aiohttp's `client` fixture: a TestServer on a real TCP port in this event loop, over the test
PostgreSQL and Redis, with the flusher and the sweeper driven by the tests (run_background=False). The browser
runs in the same event loop, so a test can drive the page, the flusher and PostgreSQL in one story.

Screenshots of the key moments go to test-output/screenshots/ (gitignored); docs/screenshots/ keeps a few.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.server.conftest import client  # the hub on a real TCP port

__all__ = ["client"]

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - a dev extra; the fixture below says so
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def base(client: TestClient[Any, Any]) -> str:
    """The hub's address as a browser sees it (a real TCP port on 127.0.0.1)."""
    return str(client.make_url("")).rstrip("/")


async def shot(page: Page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


async def new_page(browser: Browser, **options: Any) -> Page:
    context = await browser.new_context(**{"viewport": {"width": 1200, "height": 860}, **options})
    page = await context.new_page()
    page.on("pageerror", lambda exc: PAGE_ERRORS.append(f"{page.url}: {exc}"))
    page.on("console", lambda m: PAGE_ERRORS.append(m.text) if "Content Security Policy" in m.text else None)
    return page


PAGE_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def no_page_errors() -> Iterator[None]:
    """Every browser test fails on an uncaught script error or a Content-Security-Policy refusal in its pages."""
    PAGE_ERRORS.clear()
    yield
    assert PAGE_ERRORS == []


async def start_exam(page: Page, base: str, name: str = "Asha", slug: str = "biology-quick-10") -> str:
    """From the landing page: name, test, start; then full screen. Returns the session id."""
    await page.goto(f"{base}/")
    await page.get_by_label("Your name").fill(name)
    await page.locator(f"input[data-slug='{slug}']").check()
    await page.get_by_role("button", name="Start the test").click()
    await page.wait_for_url(re.compile(r"/exam/[0-9a-f]{32}$"))
    await enter_fullscreen(page)
    await expect(page.locator("#connection")).to_have_text("Connected")
    sid = page.url.rsplit("/", 1)[-1]
    return sid


async def enter_fullscreen(page: Page) -> None:
    await page.get_by_role("button", name="Enter full screen").click()
    await expect(page.locator("#fullscreen")).to_be_hidden()


async def choose(page: Page, question: int, option: int) -> None:
    """Answer question `question` (1-based, in display order) with the option at display position `option`."""
    await page.locator("#navigator button").nth(question - 1).click()
    await expect(page.locator("#q-number")).to_contain_text(f"Question {question} of")
    await page.locator("#options .option").nth(option).click()
