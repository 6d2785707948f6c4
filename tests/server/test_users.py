from __future__ import annotations

import secrets
from typing import Any

from aiohttp.test_utils import TestClient

from tests.server.conftest import bearer, token_for


async def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert (resp.status, body["error"]) == (status, code), body
    return body


def name() -> str:
    return f"u{secrets.token_hex(5)}"


async def test_register_login_me(client: TestClient[Any, Any]) -> None:
    username = name()
    r = await client.post(
        "/api/auth/register",
        json={
            "username": username,
            "password": "correct horse",
            "display_name": "Asha",
            "email": f"{username}@example.org",
        },
    )
    assert r.status == 201
    reg = await r.json()
    assert reg["role"] == "student"
    await error(
        await client.post(
            "/api/auth/register", json={"username": username, "password": "another one", "display_name": "B"}
        ),
        409,
        "conflict",
    )
    await error(
        await client.post("/api/auth/login", json={"username": username, "password": "wrong pass"}),
        401,
        "invalid_credentials",
    )
    await error(
        await client.post("/api/auth/login", json={"username": name(), "password": "whatever1"}),
        401,
        "invalid_credentials",
    )
    r = await client.post("/api/auth/login", json={"username": username, "password": "correct horse"})
    login = await r.json()
    assert r.status == 200 and login["user_id"] == reg["user_id"]
    me = await (await client.get("/api/users/me", headers=bearer(login["token"]))).json()
    assert (me["username"], me["tier"], me["role"], me["display_name"]) == (username, "free", "student", "Asha")
    assert "password" not in str(me)


async def test_register_validation(client: TestClient[Any, Any]) -> None:
    for body in (
        {"username": "ab", "password": "longenough", "display_name": "x"},
        {"username": "has space", "password": "longenough", "display_name": "x"},
        {"username": name(), "password": "short", "display_name": "x"},
        {"username": name(), "password": "longenough", "display_name": "x", "email": "not-an-email"},
        {"username": name(), "password": "longenough", "display_name": "x", "role": "admin"},
    ):
        await error(await client.post("/api/auth/register", json=body), 422, "invalid_body")


async def test_admin_creates_lists_and_bulk_updates(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    proctor_name = name()
    r = await client.post(
        "/api/users",
        headers=bearer(admin),
        json={"username": proctor_name, "display_name": "P", "role": "proctor", "password": "pw-12345"},
    )
    assert r.status == 201 and (await r.json())["role"] == "proctor"
    login = await client.post("/api/auth/login", json={"username": proctor_name, "password": "pw-12345"})
    assert (await login.json())["role"] == "proctor"

    rows = [{"username": name(), "display_name": f"S{i}"} for i in range(3)] + [
        {"username": proctor_name, "display_name": "dup"}
    ]
    r = await client.post("/api/users/bulk", headers=bearer(admin), json={"users": rows})
    report = await r.json()
    assert (report["created"], report["failed"]) == (3, 1)
    assert report["rows"][3] == {"row": 3, "ok": False, "id": None, "error": report["rows"][3]["error"]}
    ids = [row["id"] for row in report["rows"][:3]]

    r = await client.post("/api/users/bulk-update", headers=bearer(admin), json={"ids": ids, "disabled": True})
    assert (await r.json())["updated"] == 3
    listed = await (await client.get("/api/users?role=student&tier=enrolled&limit=500", headers=bearer(admin))).json()
    by_id = {u["id"]: u for u in listed["users"]}
    assert all(by_id[i]["disabled"] for i in ids if i in by_id)
    await error(
        await client.post("/api/users/bulk-update", headers=bearer(admin), json={"ids": ids}), 422, "invalid_body"
    )
    await error(await client.get("/api/users?limit=0", headers=bearer(admin)), 422, "invalid_query")
    await error(await client.post("/api/users/bulk", headers=bearer(admin), json={"users": []}), 422, "invalid_body")


async def test_disabled_user_cannot_log_in(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    username = name()
    r = await client.post(
        "/api/users", headers=bearer(admin), json={"username": username, "display_name": "x", "password": "pw-123456"}
    )
    uid = (await r.json())["id"]
    await client.post("/api/users/bulk-update", headers=bearer(admin), json={"ids": [uid], "disabled": True})
    await error(
        await client.post("/api/auth/login", json={"username": username, "password": "pw-123456"}),
        401,
        "invalid_credentials",
    )
