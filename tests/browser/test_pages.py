"""The hub serves the pages and their files with the right types and headers; anything else is a JSON 404."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient


@pytest.mark.parametrize(("path", "kind"), [
    ("/", "text/html"),
    ("/exam/" + "a" * 32, "text/html"),
    ("/proctor", "text/html"),
    ("/analytics", "text/html"),
    ("/static/js/exam.js", "text/javascript"),
    ("/static/js/proctor.js", "text/javascript"),
    ("/static/css/app.css", "text/css"),
])  # fmt: skip
async def test_pages_and_files_have_their_content_type(client: TestClient[Any, Any], path: str, kind: str) -> None:
    r = await client.get(path)
    assert r.status == 200, await r.text()
    assert r.content_type == kind and r.charset == "utf-8"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    body = await r.text()
    assert body.strip()


@pytest.mark.parametrize("path", [
    "/static/js/nope.js",
    "/static/../routes/pages.py",
    "/static/%2e%2e/routes/pages.py",
    "/static/js/..%2f..%2froutes%2fpages.py",
    "/static/.hidden",
    "/static/js",
    "/static/js/",
    "/exam/not-a-session",
    "/exam/" + "A" * 32,
    "/nothing-here",
])  # fmt: skip
async def test_bad_paths_are_json_404(client: TestClient[Any, Any], path: str) -> None:
    r = await client.get(path)
    assert r.status == 404, (path, await r.text())
    assert r.content_type == "application/json"
    body = await r.json()
    assert body["error"] in ("not_found", "session_not_found") and body["message"]


async def test_pages_are_not_in_the_api_description(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    assert "/" not in spec["paths"] and "/proctor" not in spec["paths"]
    assert "/api/templates/{id}/scores" in spec["paths"]


async def test_a_page_refuses_other_methods(client: TestClient[Any, Any]) -> None:
    r = await client.post("/proctor", data=b"x")
    assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
