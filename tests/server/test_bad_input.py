"""Bad input gets a clear error frame or close code, and changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.closecodes import Close
from tests.conftest import template_id
from tests.server.conftest import Student, services, student


async def connected(client: TestClient[Any, Any]) -> Student:
    st = await student(client, await template_id(services(client).pool, "biology-quick-10"))
    await st.connect()
    return st


async def unchanged(client: TestClient[Any, Any], st: Student) -> None:
    stored = await services(client).store.load(st.sid)
    assert stored is not None
    assert stored.state.last_seq == 0 and not stored.state.answers and not stored.state.cheats
    assert stored.state.status.value == "active"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed"),
        (b"\xc1\x00", "malformed"),  # 0xc1 is never valid msgpack
        (json.dumps([1, 2, 3]), "invalid_message"),
        (json.dumps({"type": "teleport", "seq": 1}), "unknown_type"),
        (json.dumps({"seq": 1, "q": 1, "choice": "a"}), "invalid_message"),
        (json.dumps({"type": "answer", "seq": 1, "q": 1, "choice": "a", "extra": True}), "invalid_message"),
        (json.dumps({"type": "answer", "q": 1, "choice": "a"}), "invalid_message"),
        (json.dumps({"type": "answer", "seq": "1", "q": 1, "choice": "a"}), "invalid_message"),
        (json.dumps({"type": "answer", "seq": 0, "q": 1, "choice": "a"}), "invalid_message"),
        (json.dumps({"type": "answer", "seq": 1, "q": 1, "choice": "<script>"}), "invalid_message"),
        (json.dumps({"type": "event", "seq": 1, "kind": "second_device"}), "invalid_message"),
        (json.dumps({"type": "answer", "seq": 1, "q": 1, "choice": "a", "time_ms": -5}), "invalid_message"),
    ],
    ids=["bad-json", "bad-msgpack", "not-an-object", "unknown-type", "no-type", "extra-field", "missing-seq",
         "string-seq", "zero-seq", "bad-choice", "server-only-kind", "negative-time"],
)  # fmt: skip
async def test_invalid_frames_get_an_error_frame(client: TestClient[Any, Any], frame: str | bytes, code: str) -> None:
    st = await connected(client)
    assert st.ws is not None
    if isinstance(frame, bytes):
        await st.ws.send_bytes(frame)
    else:
        await st.ws.send_str(frame)
    err = await st.recv()
    assert err["type"] == "error" and err["code"] == code, err
    assert err["message"]
    await unchanged(client, st)
    q = st.questions()[0]  # the connection is still usable
    assert (await st.answer(q["id"], q["options"][0]["id"]))["type"] == "ack"


async def test_question_not_in_session_and_bad_option(client: TestClient[Any, Any]) -> None:
    st = await connected(client)
    mine = {q["id"] for q in st.questions()}
    other = next(i for i in range(1, 10_000) if i not in mine)
    err = await st.answer(other, "a", seq=1)
    assert (err["type"], err["code"], err["seq"]) == ("error", "unknown_question", 1)
    err = await st.answer(st.questions()[0]["id"], "z", seq=1)
    assert (err["type"], err["code"]) == ("error", "invalid_choice")
    await unchanged(client, st)


async def test_oversized_frame_closes_1009(client: TestClient[Any, Any]) -> None:
    st = await connected(client)
    await st.send({"type": "answer", "seq": 1, "q": 1, "choice": "a", "pad": "x" * 70_000})
    assert await st.closed() == Close.MESSAGE_TOO_BIG
    await unchanged(client, st)


async def test_too_many_bad_frames_close_the_connection(client: TestClient[Any, Any]) -> None:
    st = await connected(client)
    assert st.ws is not None
    limit = services(client).settings.max_bad_frames
    for _ in range(limit + 1):
        await st.ws.send_str("nope")
    assert await st.closed() == Close.PROTOCOL_ERROR
    await unchanged(client, st)


async def _refused(client: TestClient[Any, Any], url: str, **headers: str) -> tuple[dict[str, Any], int | None]:
    ws = await client.ws_connect(url, headers=headers)
    msg = await ws.receive(timeout=5)
    frame = json.loads(msg.data)
    await ws.receive(timeout=5)
    return frame, ws.close_code


async def test_tokens_wrong_expired_or_for_something_else(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    expired, _ = s.auth.session_token(st.sid, uuid.uuid4(), -10)
    from server.auth import Role

    user_token = s.auth.user_token(uuid.uuid4(), Role.STUDENT, 60)
    forged = st.token[:-4] + ("AAAA" if not st.token.endswith("AAAA") else "BBBB")
    for token, needle in [
        ("", "required"),
        ("garbage", "invalid token"),
        (forged, "invalid token"),
        (expired, "expired"),
        (user_token, "not meant"),
    ]:
        frame, code = await _refused(client, f"/ws/student?token={token}")
        assert code == Close.UNAUTHORIZED, token
        assert frame["code"] == "unauthorized" and needle in frame["message"]
    await unchanged_created(client, st.sid)


async def unchanged_created(client: TestClient[Any, Any], sid: str) -> None:
    stored = await services(client).store.load(sid)
    assert stored is not None and stored.state.status.value == "created" and stored.epoch == 0


async def test_someone_elses_session_token_is_refused(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    # a validly signed token naming this session but another user
    token, _ = s.auth.session_token(st.sid, uuid.uuid4(), 60)
    frame, code = await _refused(client, f"/ws/student?token={token}")
    assert code == Close.UNAUTHORIZED and frame["code"] == "forbidden"


async def test_unknown_session(client: TestClient[Any, Any]) -> None:
    s = services(client)
    token, _ = s.auth.session_token("f" * 32, uuid.uuid4(), 60)
    frame, code = await _refused(client, f"/ws/student?token={token}")
    assert code == Close.SESSION_NOT_FOUND and frame["code"] == "session_not_found"


async def test_foreign_origin_is_refused(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    frame, code = await _refused(client, f"/ws/student?token={st.token}", Origin="https://evil.example")
    assert code == Close.FORBIDDEN_ORIGIN and frame["code"] == "forbidden_origin"
    await unchanged_created(client, st.sid)
    own = f"http://{client.host}:{client.port}"
    ok = Student(client, st.token, st.sid)
    assert (await ok.connect(Origin=own))["type"] == "state"
