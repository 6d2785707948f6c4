"""Tokens: signed (HS256, pinned), short-lived, with a pinned audience; and the session a student acts on is
always the one named by its token, never by anything in a message body.

Already shown elsewhere, not repeated here: tests/server/test_bad_input.py (WebSocket: no token, garbage, a
signature with its tail changed, expired, a user token where a session token is needed, a validly signed token
of another user for this session, an unknown session), tests/server/test_authz.py (REST: every protected
endpoint refuses an anonymous and a forged token), tests/server/test_rest.py (a session token of another
session reading progress). This file adds what those do not cover: the algorithm pinning (`alg: none`, an
algorithm confusion token carrying the right key's signature, HS512), a correctly formed token signed with
another key, a tampered payload under the original signature, the audience swapped in both directions, the
issuer, lifetimes, and frames that name another session."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.auth import SESSION_AUDIENCE, USER_AUDIENCE, Auth, Role, TokenError
from server.closecodes import Close
from tests.conftest import template_id
from tests.server.conftest import bearer, services, start, student, token_for

SECRET = "test-secret-" + "x" * 40  # tests/conftest.py's settings


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def craft(header: dict[str, Any], payload: dict[str, Any], key: str | None, digest: Any = hashlib.sha256) -> str:
    """A JWT built by hand, as an attacker would: any header, any payload, signed with any key (or not)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def payload_of(token: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return data


def with_payload(token: str, payload: dict[str, Any]) -> str:
    """The same header and signature over a different payload (a tampered token)."""
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(payload).encode())}.{signature}"


def bad_user_tokens(good: str) -> dict[str, str]:
    """Tokens that must all be refused where a user token is expected. `good` is a valid admin token."""
    admin = payload_of(good)
    hs256 = {"alg": "HS256", "typ": "JWT"}
    return {
        "alg-none": craft({"alg": "none", "typ": "JWT"}, admin, None),
        "alg-none-capitalised": craft({"alg": "None", "typ": "JWT"}, admin, None),
        # algorithm confusion: the header claims RS256 but the signature is the right key's HMAC, as it would be
        # if a server fed its key (an RSA public key) to HMAC because the header said so
        "rs256-confusion": craft({"alg": "RS256", "typ": "JWT"}, admin, SECRET),
        "hs512-right-key": craft({"alg": "HS512", "typ": "JWT"}, admin, SECRET, hashlib.sha512),
        "wrong-key": craft(hs256, admin, "another-secret-" + "y" * 40),
        "tampered-role": with_payload(good, {**admin, "role": "admin", "sub": str(uuid.uuid4())}),
        "expired": craft(hs256, {**admin, "iat": admin["iat"] - 7200, "exp": admin["iat"] - 3600}, SECRET),
        "no-exp": craft(hs256, {k: v for k, v in admin.items() if k != "exp"}, SECRET),
        "wrong-issuer": craft(hs256, {**admin, "iss": "someone-else"}, SECRET),
        "no-audience": craft(hs256, {k: v for k, v in admin.items() if k != "aud"}, SECRET),
        "session-audience": craft(hs256, {**admin, "aud": SESSION_AUDIENCE}, SECRET),
        "unknown-role": craft(hs256, {**admin, "role": "superuser"}, SECRET),
        "not-a-uuid": craft(hs256, {**admin, "sub": "1 OR 1=1"}, SECRET),
    }


def test_the_verifier_pins_algorithm_audience_issuer_and_lifetime() -> None:
    """The verifier on its own (the endpoints below show the same through HTTP and WebSocket)."""
    auth = Auth(SECRET)
    good = auth.user_token(uuid.uuid4(), Role.ADMIN, 600)
    assert auth.verify_user(good).role is Role.ADMIN
    for name, token in bad_user_tokens(good).items():
        with pytest.raises(TokenError):
            auth.verify_user(token)
            pytest.fail(name)


def test_tokens_are_short_lived() -> None:
    """A user token lives 7 days by default, a session token the exam's duration plus the slack: the
    expiry is in the token and checked on every use."""
    auth = Auth(SECRET)
    now = int(time.time())
    user = payload_of(auth.user_token(uuid.uuid4(), Role.STUDENT, 3600))
    session = payload_of(auth.session_token("a" * 32, uuid.uuid4(), 600)[0])
    assert user["exp"] - user["iat"] == 3600 and abs(user["iat"] - now) <= 2
    assert session["exp"] - session["iat"] == 600 and session["aud"] == SESSION_AUDIENCE
    assert user["aud"] == USER_AUDIENCE


async def test_rest_refuses_every_bad_user_token(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    assert (await client.get("/api/users", headers=bearer(admin))).status == 200
    for name, token in bad_user_tokens(admin).items():
        r = await client.get("/api/users", headers=bearer(token))
        body = await r.json()
        assert (r.status, body["error"]) == (401, "unauthorized"), (name, body)


async def test_a_session_token_is_not_a_user_token(client: TestClient[Any, Any]) -> None:
    """Audience swapped the other way (test_bad_input shows a user token refused on the student WebSocket)."""
    started = await start(client, await template_id(services(client).pool, "biology-quick-10"))
    session_token = started["token"]
    for method, path, body in [
        ("GET", "/api/users/me", None),
        ("POST", "/api/sessions", {"template_id": 1}),  # a session token cannot start more sessions
        ("POST", f"/api/proctor/sessions/{started['session_id']}/actions", {"action": "pause"}),
        ("GET", f"/api/proctor/sessions/{started['session_id']}/audit", None),
    ]:
        r = await client.request(method, path, json=body, headers=bearer(session_token))
        assert r.status == 401 and (await r.json())["error"] == "unauthorized", (path, await r.text())
    ws = await client.ws_connect(f"/ws/proctor?template=1&token={session_token}")
    frame = json.loads((await ws.receive(timeout=5)).data)
    await ws.receive(timeout=5)
    assert frame["code"] == "unauthorized" and ws.close_code == Close.UNAUTHORIZED


async def refused_on_ws(client: TestClient[Any, Any], token: str) -> tuple[str, int | None]:
    ws = await client.ws_connect(f"/ws/student?token={token}")
    frame = json.loads((await ws.receive(timeout=5)).data)
    await ws.receive(timeout=5)
    return frame["code"], ws.close_code


async def test_the_student_websocket_refuses_crafted_session_tokens(client: TestClient[Any, Any]) -> None:
    s = services(client)
    st = await student(client, await template_id(s.pool, "biology-quick-10"))
    other = await student(client, await template_id(s.pool, "biology-quick-10"))
    good = payload_of(st.token)
    hs256 = {"alg": "HS256", "typ": "JWT"}
    crafted = {
        "alg-none": craft({"alg": "none", "typ": "JWT"}, good, None),
        "rs256-confusion": craft({"alg": "RS256", "typ": "JWT"}, good, SECRET),
        "hs512-right-key": craft({"alg": "HS512", "typ": "JWT"}, good, SECRET, hashlib.sha512),
        "wrong-key": craft(hs256, good, "another-secret-" + "y" * 40),
        # the student's own signature over a payload that names the other student's session
        "tampered-sid": with_payload(st.token, {**good, "sid": other.sid}),
        "tampered-exp": with_payload(st.token, {**good, "exp": good["exp"] + 10**6}),
        "no-sid": craft(hs256, {k: v for k, v in good.items() if k != "sid"}, SECRET),
    }
    for name, token in crafted.items():
        code, close = await refused_on_ws(client, token)
        assert (code, close) == ("unauthorized", Close.UNAUTHORIZED), name
    for sid in (st.sid, other.sid):  # nobody opened either session
        stored = await s.store.load(sid)
        assert stored is not None and stored.epoch == 0 and stored.state.status.value == "created"


async def test_frames_naming_another_session_act_on_the_tokens_session_only(client: TestClient[Any, Any]) -> None:
    """The wire format has no session field: a frame that names a session, a user or a token is refused as
    it stands (unknown field), and every valid frame changes only the session its connection's token names."""
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    mine, theirs = await student(client, tid), await student(client, tid)
    await mine.connect()
    await theirs.connect()
    before = await s.store.load(theirs.sid)
    q = mine.questions()[0]
    shared = next((x for x in theirs.questions() if x["id"] == q["id"]), None)
    for field, value in [("session", theirs.sid), ("sid", theirs.sid), ("session_id", theirs.sid),
                         ("user", str(uuid.uuid4())), ("token", theirs.token), ("epoch", 99)]:  # fmt: skip
        reply = await mine.answer(q["id"], q["options"][0]["id"], seq=1, **{field: value})
        assert (reply["type"], reply["code"]) == ("error", "invalid_message"), reply
        assert field in reply["message"]
    # a valid frame: only the token's session changes, even for a question both papers hold
    assert (await mine.answer(q["id"], q["options"][1]["id"], seq=1))["type"] == "ack"
    await mine.send({"type": "submit", "seq": 2})
    assert (await mine.recv())["type"] == "ack"
    mine_after, theirs_after = await s.store.load(mine.sid), await s.store.load(theirs.sid)
    assert mine_after is not None and theirs_after is not None and before is not None
    assert mine_after.state.answers[q["id"]].choice == q["options"][1]["id"] and mine_after.state.status.finished
    assert theirs_after.state == before.state, "the other student's session changed"
    assert shared is None or q["id"] not in theirs_after.state.answers
    # and the other student carries on undisturbed
    tq = theirs.questions()[0]
    assert (await theirs.answer(tq["id"], tq["options"][0]["id"]))["type"] == "ack"


async def test_rest_takes_the_session_from_the_token(client: TestClient[Any, Any]) -> None:
    """A session token opens its own session only, whatever the path names; a student's user token opens that
    student's sessions only."""
    s = services(client)
    tid = await template_id(s.pool, "biology-quick-10")
    asha_user = await token_for(client, "student")
    asha = await start(client, tid, asha_user)
    ravi = await start(client, tid)
    for path in ("", "/result", "/rank"):
        for token in (asha["token"], asha_user):
            r = await client.get(f"/api/sessions/{ravi['session_id']}{path}", headers=bearer(token))
            # /rank takes user tokens only: a session token is refused before ownership is looked at
            expected = (401, "unauthorized") if path == "/rank" and token is asha["token"] else (403, "forbidden")
            assert (r.status, (await r.json())["error"]) == expected, (path, await r.text())
    r = await client.get(f"/api/sessions/{asha['session_id']}", headers=bearer(asha["token"]))
    assert r.status == 200 and (await r.json())["session_id"] == asha["session_id"]
