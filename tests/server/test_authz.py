"""The authorization matrix: every declared endpoint against every role, from the endpoint registry itself
(so an endpoint added later is covered without anyone remembering to add it here)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.auth import Role
from server.routes import load
from tests.server.conftest import bearer, token_for

ENDPOINTS = [ep for ep in load().endpoints if ep.roles is not None]


def concrete(path: str) -> str:
    path = re.sub(r"\{\w+:\\d\+\}", "1", path)
    return re.sub(r"\{\w+(:[^}]+)?\}", "0" * 32, path)


@pytest.fixture
async def tokens(client: TestClient[Any, Any]) -> dict[Role, str]:
    return {role: await token_for(client, role.value) for role in Role}


def test_every_protected_endpoint_is_in_the_matrix() -> None:
    assert len(ENDPOINTS) >= 8
    assert all(ep.roles for ep in ENDPOINTS)


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[f"{e.method} {e.path}" for e in ENDPOINTS])
async def test_roles(client: TestClient[Any, Any], tokens: dict[Role, str], ep: Any) -> None:
    url = concrete(ep.path)
    anonymous = await client.request(ep.method, url, json={})
    assert anonymous.status == 401, (url, await anonymous.text())
    assert (await anonymous.json())["error"] == "unauthorized"
    forged = await client.request(ep.method, url, json={}, headers=bearer(tokens[Role.ADMIN][:-3] + "xyz"))
    assert forged.status == 401
    for role, token in tokens.items():
        r = await client.request(ep.method, url, json={}, headers=bearer(token))
        body = await r.json()
        if role in ep.roles:
            assert r.status not in (401, 403), (role, url, body)
        else:
            assert (r.status, body["error"]) == (403, "forbidden"), (role, url, body)
