"""Tokens: signed (HS256, pinned), short-lived, with a pinned audience; and the session a student acts on is
always the one named by its token, never by anything in a message body.

Already shown elsewhere, not repeated here: tests/server/test_bad_input.py (WebSocket: no token, garbage, a
signature with its tail changed, expired, a user token where a session token is needed, a validly signed token
of another user for this session, an unknown session), tests/server/test_authz.py (REST: every protected
endpoint refuses an anonymous and a forged token), tests/server/test_rest.py (a session token of another
session reading progress). This file adds what those do not cover: the algorithm pinning (`alg: none`, an
algorithm confusion token carrying the right key's signature, HS512), a correctly formed token signed with
another key, a tampered payload under the original signature, the audience swapped in both directions, the
issuer, lifetimes, and frames that name another session; and the verifier held to PyJWT, which examhub used before
its own HS256 codec (server/auth.py says why): each reads the other's tokens, and claims PyJWT refuses are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

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
    """A JWT built by hand, as an attacker would: any header, any payload, signed with any key (or not). The header
    is written as JWT libraries write it (sorted keys, no spaces), so an HS256 token gets past the header check and
    is refused, if it is, for what its payload says."""
    canonical = json.dumps(header, separators=(",", ":"), sort_keys=True)
    signing_input = f"{b64(canonical.encode())}.{b64(json.dumps(payload).encode())}"
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
    return {name: token for name, (token, _) in bad_user_tokens_and_reasons(good).items()}


def bad_user_tokens_and_reasons(good: str) -> dict[str, tuple[str, str]]:
    """Each bad token with a word of the verifier's reason for refusing it, so that a test sees each refused for
    its own flaw (a token refused for its header would say nothing about the expiry check)."""
    reasons = {
        "alg-none": "header", "alg-none-capitalised": "header", "rs256-confusion": "header",
        "hs512-right-key": "header", "wrong-key": "signature", "tampered-role": "signature", "expired": "expired",
        "no-exp": '"exp"', "wrong-issuer": "issuer", "no-audience": '"aud"', "session-audience": "not meant",
        "unknown-role": "claims", "not-a-uuid": "claims",
    }  # fmt: skip
    return {name: (token, reasons[name]) for name, token in _bad_user_tokens(good).items()}


def _bad_user_tokens(good: str) -> dict[str, str]:
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
    for name, (token, reason) in bad_user_tokens_and_reasons(good).items():
        with pytest.raises(TokenError, match=reason):
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


def pyjwt_decode(token: str, audience: str) -> dict[str, Any]:
    """PyJWT with the checks examhub asked of it before it had its own codec."""
    claims: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience=audience, issuer="examhub",
        options={"require": ["exp", "iat", "aud", "iss", "sub"]},
    )  # fmt: skip
    return claims


def test_pyjwt_reads_our_tokens_and_we_read_its() -> None:
    """Both ways: a token signed before the upgrade (by PyJWT) stays good after it, and one signed after is a
    standard JWT that any library checks."""
    auth = Auth(SECRET)
    user = uuid.uuid4()
    ours = auth.user_token(user, Role.PROCTOR, 600)
    assert pyjwt_decode(ours, USER_AUDIENCE) == payload_of(ours)
    session, token_id = auth.session_token("s" * 32, user, 600)
    assert pyjwt_decode(session, SESSION_AUDIENCE)["jti"] == token_id
    now = int(time.time())
    theirs = jwt.encode({"sub": str(user), "role": "proctor", "iss": "examhub", "aud": USER_AUDIENCE, "iat": now,
                         "exp": now + 600}, SECRET, algorithm="HS256")  # fmt: skip
    assert auth.verify_user(theirs) == auth.verify_user(ours)
    theirs = jwt.encode({"sub": str(user), "sid": "s" * 32, "jti": "j1", "iss": "examhub", "aud": SESSION_AUDIENCE,
                         "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")  # fmt: skip
    assert auth.verify_session(theirs).token_id == "j1"


def test_every_segment_must_be_canonical_base64url() -> None:
    """The signature of a good token written every other way a lenient decoder reads as the same bytes, and
    tokens of the wrong shape: all refused."""
    auth = Auth(SECRET)
    good = auth.user_token(uuid.uuid4(), Role.STUDENT, 600)
    head, body, sig = good.split(".")
    # 32 bytes are 43 characters whose last carries 2 unused bits: a sibling character decodes to the same bytes
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    sibling = sig[:-1] + alphabet[last ^ 1]
    assert unb64(sibling) == unb64(sig)
    std = base64.b64encode(unb64(sig)).rstrip(b"=").decode()  # '+' and '/' where base64url has '-' and '_'
    bad = {
        "padded signature": f"{head}.{body}.{sig}=",
        "non-canonical last character": f"{head}.{body}.{sibling}",
        "padded payload": f"{head}.{body}{'=' * (-len(body) % 4) or '===='}.{sig}",
        "two segments": f"{head}.{body}",
        "four segments": f"{good}.{sig}",
        "non-ASCII": good[:-1] + "\u00e9",
        "a space": good[:10] + " " + good[10:],
        "empty": "",
        "dots only": "..",
    }
    if std != sig:
        bad["standard alphabet"] = f"{head}.{body}.{std}"
    for name, token in bad.items():
        with pytest.raises(TokenError):
            auth.verify_user(token)
            pytest.fail(name)
    assert auth.verify_user(good)


def test_iat_may_be_a_little_ahead_for_clock_skew_and_no_more() -> None:
    """Hub processes on different hosts check each other's tokens: an iat a few seconds ahead of this host's clock
    is accepted (PyJWT refused it), one past IAT_LEEWAY_S is not."""
    from server.auth import IAT_LEEWAY_S

    auth = Auth(SECRET)
    base = payload_of(auth.user_token(uuid.uuid4(), Role.STUDENT, 600))
    now = int(time.time())
    skewed = craft({"alg": "HS256", "typ": "JWT"}, {**base, "iat": now + 5}, SECRET)
    assert auth.verify_user(skewed).role is Role.STUDENT
    ahead = craft({"alg": "HS256", "typ": "JWT"}, {**base, "iat": now + IAT_LEEWAY_S + 5}, SECRET)
    with pytest.raises(TokenError, match="issued in the future"):
        auth.verify_user(ahead)


NOW = int(time.time())
_MISSING = object()


def good_or(good: Any, *bad: Any) -> st.SearchStrategy[Any]:
    """The good value half the time, so that tokens with a single flaw come up often."""
    return st.one_of(st.just(good), st.sampled_from(bad))


@settings(max_examples=300, deadline=None)
@given(
    exp=good_or(NOW + 86400, NOW + 86400.5, 10**12, NOW - 10, NOW - 10.5, "soon", True, None, _MISSING),
    iat=good_or(NOW - 5, 1.5, NOW + 86400, "now", _MISSING),
    aud=good_or(USER_AUDIENCE, [USER_AUDIENCE, "other"], ["other"], [], "other", 5, None, _MISSING),
    iss=good_or("examhub", "someone-else", 3, None, _MISSING),
    sub=good_or(str(uuid.UUID(int=7)), 5, None, _MISSING),
)
def test_claims_are_checked_as_pyjwt_checks_them(exp: Any, iat: Any, aud: Any, iss: Any, sub: Any) -> None:
    """Any mix of good and bad registered claims, correctly signed: examhub accepts exactly what PyJWT accepts
    (iat is either in the past or a day ahead, past the clock leeway PyJWT does not have; NOW is taken when the
    module is imported, and the good exp is a day later so that a long suite cannot turn it into a bad one)."""
    claims = {k: v for k, v in [("exp", exp), ("iat", iat), ("aud", aud), ("iss", iss), ("sub", sub)]
              if v is not _MISSING}  # fmt: skip
    token = craft({"alg": "HS256", "typ": "JWT"}, {**claims, "role": "student"}, SECRET)
    try:
        expected: object = pyjwt_decode(token, USER_AUDIENCE)
    except jwt.PyJWTError:
        expected = None
    try:
        got: object = Auth(SECRET).verify_user(token)
    except TokenError:
        got = None
    assert (got is None) == (expected is None), (claims, expected)


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
