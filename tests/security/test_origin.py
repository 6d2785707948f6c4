"""The WebSocket Origin allowlist (cross-site WebSocket hijacking) on both feeds.

tests/server/test_bad_input.py::test_foreign_origin_is_refused shows the student feed refusing a foreign
Origin and accepting the hub's own; this adds the proctor feed (a staff token in a cookie-less header is what
a hijacking page would ride on), the `null` origin of sandboxed frames and files, look-alike origins, and
EXAMHUB_ALLOWED_ORIGINS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.closecodes import Close
from server.settings import Settings
from tests.conftest import template_id
from tests.server.conftest import ClientFactory, Student, bearer, services, student
from tests.server.test_proctoring import own_template, proctor_token

FOREIGN = ["https://evil.example", "null", "http://127.0.0.1.evil.example", "https://127.0.0.1", "file://"]


async def refusal(client: TestClient[Any, Any], url: str, **headers: str) -> tuple[dict[str, Any], int | None]:
    ws = await client.ws_connect(url, headers=headers)
    frame: dict[str, Any] = json.loads((await ws.receive(timeout=5)).data)
    await ws.receive(timeout=5)
    return frame, ws.close_code


@pytest.mark.parametrize("origin", FOREIGN)
async def test_the_proctor_feed_refuses_a_foreign_origin(client: TestClient[Any, Any], origin: str) -> None:
    tid = await own_template(client)
    token = await proctor_token(client, tid)
    frame, code = await refusal(client, f"/ws/proctor?template={tid}", Origin=origin, **bearer(token))
    assert (frame["code"], code) == ("forbidden_origin", Close.FORBIDDEN_ORIGIN)
    own = f"http://{client.host}:{client.port}"  # the same proctor from the hub's own page is served
    ws = await client.ws_connect(f"/ws/proctor?template={tid}", headers={"Origin": own, **bearer(token)})
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "snapshot"
    await ws.close()


@pytest.mark.parametrize("origin", FOREIGN[1:])  # evil.example: test_bad_input.py
async def test_the_student_feed_refuses_look_alike_origins(client: TestClient[Any, Any], origin: str) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    frame, code = await refusal(client, f"/ws/student?token={st.token}", Origin=origin)
    assert (frame["code"], code) == ("forbidden_origin", Close.FORBIDDEN_ORIGIN)
    stored = await s.store.load(st.sid)
    assert stored is not None and stored.epoch == 0  # refused before the session was touched


async def test_allowed_origins_extend_the_allowlist(aiohttp_client: ClientFactory, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings.with_(allowed_origins=("https://exam.school.example",))))
    st = await student(client, await template_id(services(client).pool, "biology-quick-10"))
    _, code = await refusal(client, f"/ws/student?token={st.token}", Origin="https://other.school.example")
    assert code == Close.FORBIDDEN_ORIGIN
    ok = Student(client, st.token, st.sid)
    assert (await ok.connect(Origin="https://exam.school.example/"))["type"] == "state"  # trailing / ignored
