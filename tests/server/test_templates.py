from __future__ import annotations

import secrets
from typing import Any

from aiohttp.test_utils import TestClient

from tests.server.conftest import bearer, services, start, token_for


def config(**over: Any) -> dict[str, Any]:
    return {"count": 5, "duration_s": 300, "topics": ["genetics", "ecology"], **over}


async def bank_id(client: TestClient[Any, Any]) -> int:
    return int(await services(client).pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'"))


async def test_template_lifecycle(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    slug = f"t-{secrets.token_hex(4)}"
    body = {
        "slug": slug,
        "name": "Genetics and ecology",
        "bank_id": await bank_id(client),
        "config": config(scheme={"correct": 3, "wrong": -1}, policy={"warn_at": 2, "flag_at": None}),
    }
    r = await client.post("/api/templates", json=body, headers=bearer(admin))
    created = await r.json()
    assert r.status == 201 and created["slug"] == slug and created["questions"] == 5
    assert created["config"]["scheme"] == {"correct": 3, "wrong": -1, "skipped": 0}
    tid = created["id"]
    r = await client.post("/api/templates", json=body, headers=bearer(admin))
    assert r.status == 409

    # a session started now keeps the rules it started with
    started = await start(client, tid)
    stored = await services(client).store.load(started["session_id"])
    assert stored is not None and stored.scheme.correct == 3 and stored.state.policy.flag_at is None

    r = await client.put(
        f"/api/templates/{tid}", json={"name": "Renamed", "config": config(count=6)}, headers=bearer(admin)
    )
    assert r.status == 200 and (await r.json())["questions"] == 6
    assert (await start(client, tid))["questions"] == 6

    r = await client.delete(f"/api/templates/{tid}", headers=bearer(admin))
    assert (await r.json())["status"] == "archived"
    listed = await (await client.get("/api/templates")).json()
    assert tid not in [t["id"] for t in listed["templates"]]
    r = await client.post(
        "/api/sessions", json={"template_id": tid}, headers=bearer(await token_for(client, "student"))
    )
    assert r.status == 404
    assert (await (await client.get(f"/api/templates/{tid}")).json())["status"] == "archived"


async def test_template_validation(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    bank = await bank_id(client)
    cases = [
        ({"count": 0, "duration_s": 300}, 422, "invalid_body"),
        ({"count": 5, "duration_s": 10}, 422, "invalid_body"),
        ({"count": 5, "duration_s": 300, "scheme": {"correct": 4, "wrong": 2}}, 422, "invalid_body"),
        ({"count": 5, "duration_s": 300, "mix": {"easy": 0, "medium": 0, "hard": 0}}, 422, "invalid_body"),
        ({"count": 5, "duration_s": 300, "policy": {"warn_at": 0}}, 422, "invalid_body"),
        ({"count": 5, "duration_s": 300, "topics": ["Not A Slug"]}, 422, "invalid_body"),
        ({"count": 500, "duration_s": 300, "topics": ["genetics"]}, 422, "template_unsatisfiable"),
        ({"count": 5, "duration_s": 300, "topics": ["astrology"]}, 422, "template_unsatisfiable"),
    ]
    for cfg, status, code in cases:
        r = await client.post(
            "/api/templates",
            headers=bearer(admin),
            json={"slug": f"v-{secrets.token_hex(4)}", "name": "x", "bank_id": bank, "config": cfg},
        )
        body = await r.json()
        assert (r.status, body["error"]) == (status, code), (cfg, body)
    r = await client.post(
        "/api/templates",
        headers=bearer(admin),
        json={"slug": "no-bank", "name": "x", "bank_id": 999_999, "config": config()},
    )
    assert r.status == 422
    assert (await client.get("/api/templates/999999")).status == 404
    assert (await client.get("/api/templates/99999999999999999999")).status == 404
    r = await client.put("/api/templates/999999", json={"name": "x", "config": config()}, headers=bearer(admin))
    assert r.status == 404


async def test_openapi_document_describes_every_endpoint(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/templates", "/api/templates/{id}", "/api/sessions", "/api/auth/login"} <= set(doc["paths"])
    post = doc["paths"]["/api/templates"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TemplateIn")
    assert post["security"] == [{"bearer": []}]
    assert "TemplateConfig" in doc["components"]["schemas"]
