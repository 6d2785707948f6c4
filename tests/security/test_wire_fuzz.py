"""Fuzzing the student frame decoder (server/wire.py) with hypothesis: whatever arrives (random bytes, text,
JSON and msgpack values of any shape, message-shaped objects with wrong fields), decode() either returns a
valid message or raises the protocol's WireError with one of its codes, never anything else; and over a live
connection an invalid frame gets an error frame and changes nothing in Redis.

REST is fuzzed by schemathesis: tests/server/test_api_fuzz.py."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from server.settings import Durability, Settings
from server.wire import _ADAPTER, AnswerMsg, EventMsg, HeartbeatMsg, SubmitMsg, WireError, decode, encode, to_command
from tests.conftest import REDIS_URL
from tests.security.budget import EXAMPLES
from tests.security.live import LiveHub, live_hub

CODES = {"malformed", "invalid_message", "unknown_type"}
MESSAGES = (AnswerMsg, EventMsg, HeartbeatMsg, SubmitMsg)


def trees(ints: st.SearchStrategy[int]) -> tuple[st.SearchStrategy[Any], ...]:
    """Values of any shape, message-shaped objects with any fields, and typed ones; `ints`: msgpack cannot carry
    integers beyond 64 bits, JSON can."""
    scalars = (st.none() | st.booleans() | ints | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=40))  # fmt: skip
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)  # fmt: skip
    shaped = st.dictionaries(st.sampled_from(FIELDS), values | st.sampled_from(TYPES) | st.integers(0, 10), max_size=7)
    typed = st.builds(lambda t, rest: {"type": t, **rest}, st.sampled_from(TYPES), shaped)
    return values, values | shaped | typed, typed


FIELDS = ["type", "seq", "q", "choice", "marked", "time_ms", "kind", "session", "sid", "user"]
TYPES = ["answer", "event", "heartbeat", "submit", "resync", "", "ANSWER", "answer "]
_, json_objects, _ = trees(st.integers() | st.integers(-(2**70), 2**70))
m_values, m_objects, m_typed = trees(st.integers(-(2**63), 2**64 - 1))


def packed(obj: Any, bin_type: bool) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=bin_type)
    return data


msgpack_frames = (
    st.builds(packed, m_objects, st.booleans())
    | st.builds(lambda m, extra: packed(m, True) + extra, m_typed, st.binary(min_size=1, max_size=4))  # trailing
    | st.builds(
        lambda code, data: packed({"type": "answer", "choice": msgpack.ExtType(code, data)}, True),
        st.integers(0, 127),
        st.binary(max_size=8),
    )
    | st.builds(
        lambda d: packed(d, True), st.dictionaries(st.integers(-(2**63), 2**63 - 1), m_values, min_size=1, max_size=3)
    )
    | st.builds(lambda b: packed({"type": "answer", "seq": 1, "q": 1, "choice": b}, True), st.binary(max_size=8))
    | st.binary(max_size=200)
)
json_frames = (
    st.builds(lambda o: json.dumps(o, allow_nan=True), json_objects)
    | st.text(max_size=200)
    | st.builds(lambda n, c: c * n, st.integers(1, 60_000), st.sampled_from(["[", '{"a":', "-", "1"]))
)
frames = json_frames | msgpack_frames


def check_decoded(data: str | bytes) -> bool:
    """True when the frame is a valid message; asserts the decoder's contract either way."""
    try:
        msg = decode(data)
    except WireError as err:
        assert err.code in CODES and isinstance(err.message, str) and err.message
        assert err.seq is None or (isinstance(err.seq, int) and err.seq >= 1)
        return False
    assert isinstance(msg, MESSAGES)
    to_command(msg)  # a valid message always converts to a command for the core
    return True


@settings(max_examples=EXAMPLES * 10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
@example("[" * 60_000)  # deeper than the interpreter's stack: was a RecursionError, closed 1011 (fixed)
@example('{"type":"answer","seq":1,"q":1,"choice":"a","q":2}')  # a duplicate key
@example(b"\x91" * 60_000)
def test_the_decoder_raises_only_protocol_errors(data: str | bytes) -> None:
    check_decoded(data)


def long_way(text: str) -> AnswerMsg | EventMsg | HeartbeatMsg | SubmitMsg | None:
    """What decode() accepted before its one-pass JSON path: orjson's parse, then the model; None: refused."""
    try:
        obj = orjson.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError:
        return None


@settings(max_examples=EXAMPLES * 10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_frames | st.builds(lambda t, rest: json.dumps({"type": t, **rest}), st.sampled_from(TYPES[:4]),
                                 st.fixed_dictionaries({"seq": st.integers(-1, 3), "q": st.integers(-1, 2**64)},
                                                       optional={"choice": st.text(max_size=3) | st.none(),
                                                                 "marked": st.booleans() | st.integers(0, 1),
                                                                 "time_ms": st.integers(-1, 10) | st.floats(),
                                                                 "kind": st.sampled_from(["blur", "x"])})))  # fmt: skip
@example('{"type":"answer","seq":1,"q":2,"choice":"A","seq":0}')  # a repeated key: the last one counts in both
@example('{"type":"answer","seq":1,"q":2,"choice":"A\\ud800"}')  # a lone surrogate
@example('{"type":"answer","seq":1.0,"q":2,"choice":"A"}')
@example('{"type":"answer","seq":1,"q":18446744073709551616,"choice":"A"}')  # beyond 64 bits
def test_the_one_pass_json_path_accepts_exactly_what_the_long_way_does(text: str) -> None:
    try:
        msg = decode(text)
    except WireError:
        msg = None
    assert msg == long_way(text)


@settings(max_examples=EXAMPLES * 10, deadline=None)
@given(st.sampled_from(["answer", "event", "heartbeat", "submit"]), st.integers(1, 2**53 - 1), st.booleans())
def test_valid_messages_round_trip_in_both_encodings(kind: str, seq: int, binary: bool) -> None:
    body: dict[str, Any] = {"type": kind, "seq": seq}
    if kind == "answer":
        body.update(q=7, choice="b")
    if kind == "event":
        body["kind"] = "blur"
    data = encode(body, binary)
    msg = decode(data if binary else data.decode())  # a text frame reaches the hub as str
    assert msg.type == kind and msg.seq == seq


# ---- over a live connection: invalid input changes nothing -------------------------------------------------


@pytest.fixture(scope="module")
def hub(database_url: str) -> Iterator[LiveHub]:
    settings = Settings(
        database_url=database_url, redis_url=REDIS_URL, redis_prefix=f"secfuzz{secrets.token_hex(4)}",
        secret="test-secret-" + "x" * 40, redis_durability=Durability.WARN, run_background=False,
        pg_pool_min=1, pg_pool_max=4,
        max_bad_frames=10**9,  # every example on one connection (the close after 20 has its own test)
        rate_ws_msgs=None, rate_rest_ip=None, rate_rest_user=None,
    )  # fmt: skip
    yield from live_hub(settings)


class Connected:
    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sid = ""

    async def open(self, binary: bool = False) -> dict[str, Any]:
        http = self.hub.http
        assert http is not None
        async with http.post("/api/auth/guest", json={"display_name": "fuzz"}) as r:
            user = (await r.json())["token"]
        async with http.get("/api/templates") as r:
            tid = next(t["id"] for t in (await r.json())["templates"] if t["slug"] == "biology-quick-10")
        async with http.post("/api/sessions", json={"template_id": tid},
                             headers={"Authorization": f"Bearer {user}"}) as r:  # fmt: skip
            started = await r.json()
        self.sid = started["session_id"]
        fmt = "&format=msgpack" if binary else ""
        self.ws = await http.ws_connect(f"/ws/student?token={started['token']}{fmt}", max_msg_size=0)
        return await self.recv()

    async def recv(self) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=10)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)  # type: ignore[no-any-return]
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msgpack.unpackb(msg.data)  # type: ignore[no-any-return]
        return {"type": "closed", "code": self.ws.close_code}

    async def snapshot(self) -> tuple[Any, ...]:
        """Everything Redis holds for the session."""
        s = self.hub.services
        k = s.store.keys.session(self.sid)
        r = s.redis
        return (await r.hgetall(k.meta), await r.hgetall(k.ans), await r.lrange(k.ev, 0, -1),
                await r.lrange(k.ledger, 0, -1), await r.zscore(k.due, self.sid))  # fmt: skip

    async def send(self, data: str | bytes) -> dict[str, Any]:
        assert self.ws is not None
        await (self.ws.send_bytes(data) if isinstance(data, bytes) else self.ws.send_str(data))
        return await self.recv()


@pytest.fixture(scope="module")
def conn(hub: LiveHub) -> Connected:
    c = Connected(hub)
    assert hub.run(c.open())["type"] == "state"
    return c


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames.filter(lambda d: len(d.encode() if isinstance(d, str) else d) < 60_000 and not check_decoded(d)))
@example("[" * 60_000)
def test_invalid_frames_on_a_live_connection_change_nothing(conn: Connected, data: str | bytes) -> None:
    before = conn.hub.run(conn.snapshot())
    reply = conn.hub.run(conn.send(data))
    assert reply["type"] == "error" and reply["code"] in CODES, reply
    assert conn.hub.run(conn.snapshot()) == before


def test_the_live_connection_still_works_after_the_fuzzing(conn: Connected) -> None:
    state = conn.hub.run(conn.snapshot())
    assert state[1] == {} and state[2] == []  # no answer, no event was ever stored from invalid input
    ack = conn.hub.run(conn.send(json.dumps({"type": "heartbeat", "seq": 1})))
    assert ack["type"] == "time"


def test_the_proctor_feed_survives_deep_nesting(hub: LiveHub) -> None:
    """The proctor feed parses its own frames (resync, ping): the same RecursionError closed it 1011 (fixed)."""

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        from server.auth import Role
        from storage import users

        s = hub.services
        admin = await users.create_user(s.pool, f"fuzz-admin-{id(hub)}", None, "fuzz", role="admin")
        token = s.auth.user_token(admin.id, Role.ADMIN, 600)
        assert hub.http is not None
        ws = await hub.http.ws_connect("/ws/proctor?template=1", headers={"Authorization": f"Bearer {token}"})
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "snapshot"
        await ws.send_str("[" * 4000)
        err = json.loads((await ws.receive(timeout=10)).data)
        await ws.send_str(json.dumps({"type": "ping"}))
        pong = json.loads((await ws.receive(timeout=10)).data)
        await ws.close()
        return err, pong

    err, pong = hub.run(go())
    assert err["code"] == "invalid_message" and pong["type"] == "pong"  # an error frame, and the feed stays open
