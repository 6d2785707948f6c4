from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import template_id
from tests.server.conftest import guest, services, start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def error(resp: Any, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == code and body["message"]


async def test_guest_login_and_templates(client: TestClient[Any, Any]) -> None:
    token = await guest(client)
    assert token.count(".") == 2
    r = await client.get("/api/templates")
    slugs = {t["slug"] for t in (await r.json())["templates"]}
    assert {"biology-quick-10", "neet-biology-90", "neet-mock-180"} <= slugs


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {}}, 422, "invalid_body"),
        ({"json": {"display_name": ""}}, 422, "invalid_body"),
        ({"json": {"display_name": "x" * 81}}, 422, "invalid_body"),
        ({"json": {"display_name": "a", "role": "admin"}}, 422, "invalid_body"),
        ({"data": "display_name=a"}, 415, "unsupported_media_type"),
        ({"data": "{", "headers": {"Content-Type": "application/json"}}, 422, "invalid_body"),
    ],
)
async def test_guest_bad_bodies(client: TestClient[Any, Any], kwargs: dict[str, Any], status: int, code: str) -> None:
    await error(await client.post("/api/auth/guest", **kwargs), status, code)


async def test_start_session_errors(client: TestClient[Any, Any]) -> None:
    token = await guest(client)
    tid = await template_id(services(client).pool, "biology-quick-10")
    await error(await client.post("/api/sessions", json={"template_id": tid}), 401, "unauthorized")
    await error(
        await client.post("/api/sessions", json={"template_id": tid}, headers=bearer("x.y.z")), 401, "unauthorized"
    )
    await error(await client.post("/api/sessions", json={"template_id": 999_999}, headers=bearer(token)), 404,
                "template_not_found")  # fmt: skip
    await error(
        await client.post("/api/sessions", json={"template_id": "1"}, headers=bearer(token)), 422, "invalid_body"
    )
    session_token = (await start(client, tid))["token"]
    await error(await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(session_token)), 401,
                "unauthorized")  # fmt: skip


async def test_progress_and_result_access(client: TestClient[Any, Any]) -> None:
    tid = await template_id(services(client).pool, "biology-quick-10")
    owner = await guest(client, "owner")
    started = await start(client, tid, owner)
    sid = started["session_id"]
    r = await client.get(f"/api/sessions/{sid}", headers=bearer(started["token"]))
    body = await r.json()
    assert r.status == 200 and body["status"] == "created" and body["total"] == 10 and body["answered"] == 0
    r = await client.get(f"/api/sessions/{sid}", headers=bearer(owner))
    assert r.status == 200
    await error(
        await client.get(f"/api/sessions/{sid}", headers=bearer(await guest(client, "other"))), 403, "forbidden"
    )
    other_session = (await start(client, tid))["token"]
    await error(await client.get(f"/api/sessions/{sid}", headers=bearer(other_session)), 403, "forbidden")
    await error(await client.get(f"/api/sessions/{sid}"), 401, "unauthorized")
    await error(await client.get(f"/api/sessions/{sid}/result", headers=bearer(started["token"])), 409, "not_finished")
    await error(await client.get(f"/api/sessions/{'0' * 32}/result", headers=bearer(owner)), 404, "session_not_found")


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    await error(await client.get("/api/nope"), 404, "not_found")
    await error(await client.put("/api/sessions"), 405, "method_not_allowed")
