"""The authorization matrix: every declared endpoint against every role, from the endpoint registry itself
(so an endpoint added later is covered without anyone remembering to add it here)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.api import _PARAM
from server.auth import Role
from server.routes import load
from tests.server.conftest import bearer, token_for

ENDPOINTS = [ep for ep in load().endpoints if ep.roles is not None]


def concrete(path: str) -> str:
    """Fill in path parameters with values of the right shape that exist nowhere (the matrix must not
    archive or retire real rows as an admin)."""
    for name, pattern in _PARAM.findall(path):
        whole = "{" + name + (":" + pattern if pattern else "") + "}"
        value = "9000000000" if pattern == r"\d+" else str(uuid.UUID(int=0)) if "0-9a-fA-F-" in pattern else "0" * 32
        path = path.replace(whole, value)
    return path


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
            # the role may pass; an object-level refusal (someone else's record) is the endpoint's own test
            assert r.status != 401 and not body.get("message", "").startswith("this needs the role"), (role, url, body)
        else:
            assert (r.status, body["error"]) == (403, "forbidden"), (role, url, body)
            assert body["message"].startswith("this needs the role")
