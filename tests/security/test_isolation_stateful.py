"""Nobody acts where they do not belong: a hypothesis state machine (RuleBasedStateMachine) drives a live hub
with two students (each with a session of their own, in the same room or in two), the room's assigned proctor,
a second proctor assigned to nothing, and a plain user, issuing random operations: answers, events, heartbeats
and submits on the students' WebSockets (with frames that name the other session or use its questions), REST
reads of sessions, results and ranks with every kind of token, proctor actions and audit reads over REST, and
proctor feed subscriptions.

Invariants, checked after every operation:
- a refused operation (401/403, or a refusal close) changed nothing in Redis, in any session;
- an operation changes at most the session it was allowed to change: a student's frames their own session
  only, a proctor's action only its target and only when assigned to that room;
- every operation the access rules refuse is refused, and every one they allow is not (the rules below, as
  docs/protocol.md states them);
- a student's socket carries only its own session (state frames name it, proctor messages to the other
  session never arrive), and a feed shows only its own room's sessions.

Who may read a session over REST (docs/protocol.md, GET /api/sessions/{sid}): its session token, its owner's
user token, admins, and the proctors assigned to the session's room. Proctor actions, audit trails and feeds:
admins, and the proctors assigned to the session's room.

Budget: EXAMHUB_SECURITY_EXAMPLES machines (default 100 in CI; tests/security/budget.py) of up to 25 steps.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from server.auth import Role
from server.settings import Durability, Settings
from storage import users as users_repo
from tests.conftest import REDIS_URL
from tests.security.budget import EXAMPLES
from tests.security.live import LiveHub, live_hub

STEPS = 25
PRESENCE = ("online", "ip", "offline", "seen", "left")  # connection bookkeeping, not the session's content
ACTIONS = ["pause", "resume", "extend", "flag", "unflag", "message", "pause", "extend", "terminate"]
WS_OPS = ["answer", "answer", "answer", "foreign_question", "naming_other", "event", "heartbeat", "submit"]
READS = ["", "/result", "/rank"]
TOKENS = ["user", "session"]

TRIES = {"machines": 0, "operations": 0, "refused": 0}  # reported by the last test of this module


@dataclass
class Actor:
    name: str
    role: Role
    user_token: str
    sid: str | None = None
    session_token: str | None = None
    template: int | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    seq: int = 0
    questions: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


class Isolation(RuleBasedStateMachine):
    hub: ClassVar[LiveHub]
    rooms: ClassVar[tuple[int, int]]  # (the proctored room, another room)
    proctor_token: ClassVar[str]  # assigned to rooms[0]
    stranger_token: ClassVar[str]  # a proctor assigned to nothing

    def __init__(self) -> None:
        super().__init__()
        self.actors: dict[str, Actor] = {}
        TRIES["machines"] += 1

    # ---- set-up ----------------------------------------------------------------------------------------

    @initialize(second_room=st.booleans())
    def setup(self, second_room: bool) -> None:
        room, other = self.rooms
        self.actors = {
            "s1": self._student("s1", room),
            "s2": self._student("s2", other if second_room else room),
            "p1": Actor("p1", Role.PROCTOR, self.proctor_token),
            "p2": Actor("p2", Role.PROCTOR, self.stranger_token),
            "u": Actor("u", Role.STUDENT, self.run(self._guest("u"))),
        }
        for name in ("s1", "s2"):
            self.run(self._connect(self.actors[name]))

    def run(self, coro: Any) -> Any:
        return self.hub.run(coro)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.hub.http is not None
        return self.hub.http

    async def _guest(self, name: str) -> str:
        async with self.http.post("/api/auth/guest", json={"display_name": name}) as r:
            return str((await r.json())["token"])

    def _student(self, name: str, template: int) -> Actor:
        async def go() -> Actor:
            token = await self._guest(name)
            async with self.http.post("/api/sessions", json={"template_id": template},
                                      headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                body = await r.json()
            return Actor(name, Role.STUDENT, token, body["session_id"], body["token"], template)

        result: Actor = self.run(go())
        return result

    async def _connect(self, a: Actor) -> None:
        a.ws = await self.http.ws_connect(f"/ws/student?token={a.session_token}")
        state = await self._frame(a)
        assert state["type"] == "state" and state["session"] == a.sid, state
        a.seq = max(a.seq, state["last_seq"])
        a.questions = state["questions"]
        a.finished = state["status"] in ("submitted", "expired", "terminated")

    async def _frame(self, a: Actor, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame on a's socket, checked: it must concern a's session only."""
        assert a.ws is not None
        msg = await a.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "code": a.ws.close_code}
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] == "state":
            assert frame["session"] == a.sid, ("another session's state on", a.name, frame["session"])
        if frame["type"] == "message":
            assert frame["text"] == f"for {a.sid}", ("a message for another session reached", a.name, frame)
        return frame

    # ---- what Redis holds -------------------------------------------------------------------------------

    async def _snapshot(self) -> dict[str, Any]:
        s = self.hub.services
        out: dict[str, Any] = {}
        for a in self.actors.values():
            if a.sid is None:
                continue
            k = s.store.keys.session(a.sid)
            meta = {f: v for f, v in (await s.redis.hgetall(k.meta)).items() if not f.startswith(PRESENCE)}
            out[a.sid] = (meta, await s.redis.hgetall(k.ans), await s.redis.lrange(k.ev, 0, -1),
                          await s.redis.zscore(k.due, a.sid))  # fmt: skip
        return out

    def _changed(self, before: dict[str, Any], after: dict[str, Any]) -> set[str]:
        return {sid for sid in before if before[sid] != after.get(sid)}

    def _sid_of(self, name: str) -> str:
        sid = self.actors[name].sid
        assert sid is not None
        return sid

    def _check(self, before: dict[str, Any], may_change: set[str], refused: bool) -> None:
        TRIES["operations"] += 1
        changed = self._changed(before, self.run(self._snapshot()))
        if refused:
            TRIES["refused"] += 1
            assert not changed, f"a refused operation changed {changed}"
        assert changed <= may_change, f"changed {changed}, allowed only {may_change}"

    # ---- students on their sockets -----------------------------------------------------------------------

    @rule(actor=st.sampled_from(["s1", "s2"]), op=st.sampled_from(WS_OPS))
    def student_sends(self, actor: str, op: str) -> None:
        a = self.actors[actor]
        other = self.actors["s2" if actor == "s1" else "s1"]
        before = self.run(self._snapshot())
        refused = self.run(self._send(a, other, op))
        self._check(before, {self._sid_of(actor)}, refused)

    async def _send(self, a: Actor, other: Actor, op: str) -> bool:
        """Send one frame on a's own socket; True when the frame was refused (error frame)."""
        if a.ws is None or a.ws.closed:
            await self._connect(a)
        if a.finished:
            return False
        q = secrets.choice(a.questions)
        mine = {x["id"] for x in a.questions}
        a.seq += 1
        frame: dict[str, Any] = {
            "type": "answer",
            "seq": a.seq,
            "q": q["id"],
            "choice": secrets.choice(q["options"])["id"],
        }
        if op == "foreign_question":
            foreign = [x for x in other.questions if x["id"] not in mine]
            if not foreign:
                a.seq -= 1
                return False
            frame["q"] = foreign[0]["id"]  # the other student's question: not in this paper
            frame["choice"] = foreign[0]["options"][0]["id"]
        elif op == "naming_other":
            frame[secrets.choice(["session", "sid", "session_id"])] = other.sid
        elif op in ("event", "heartbeat", "submit"):
            frame = {"type": op, "seq": a.seq, **({"kind": "blur"} if op == "event" else {})}
        assert a.ws is not None
        await a.ws.send_str(json.dumps(frame))
        while True:
            reply = await self._frame(a)
            if reply["type"] == "closed":
                a.finished = reply["code"] == 4000
                return False
            if reply["type"] == "finished":
                a.finished = True
            if reply.get("seq") == a.seq and reply["type"] in ("ack", "error", "time"):
                break
        if reply["type"] == "error":
            if op in ("foreign_question", "naming_other"):
                assert reply["code"] in ("unknown_question", "invalid_message", "not_active"), reply
            if op != "heartbeat":
                a.seq -= 1  # not consumed
            return True
        if op == "heartbeat":
            a.seq -= 1  # a heartbeat's seq is not consumed
        assert op not in ("foreign_question", "naming_other"), ("accepted a frame about another session", reply)
        if op == "submit":
            a.finished = True
        return False

    # ---- REST reads ------------------------------------------------------------------------------------

    def _token(self, actor: str, kind: str) -> str:
        a = self.actors[actor]
        return a.session_token if kind == "session" and a.session_token else a.user_token

    def _auth(self, actor: str, kind: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token(actor, kind)}"}

    def _may_read(self, actor: str, kind: str, target: str, path: str) -> bool:
        a = self.actors[actor]
        own = a.sid == self._sid_of(target)
        if kind == "session" and a.session_token:
            return own and path != "/rank"  # rank takes user tokens only
        if a.role is Role.STUDENT:
            return own
        return self._may_proctor(actor, "user", self.actors[target].template)  # its room's proctor only

    @rule(actor=st.sampled_from(["s1", "s2", "p1", "p2", "u"]), kind=st.sampled_from(TOKENS),
          whom=st.sampled_from(["s1", "s2"]), path=st.sampled_from(READS))  # fmt: skip
    def read_session(self, actor: str, kind: str, whom: str, path: str) -> None:
        sid = self._sid_of(whom)
        before = self.run(self._snapshot())

        async def go() -> tuple[int, Any]:
            async with self.http.get(f"/api/sessions/{sid}{path}",
                                     headers=self._auth(actor, kind)) as r:  # fmt: skip
                return r.status, await r.json()

        status, body = self.run(go())
        allowed = self._may_read(actor, kind, whom, path)
        if allowed:
            assert status in (200, 409), (actor, kind, whom, path, status, body)
            if status == 200 and path != "/rank":
                assert body["session_id"] == sid
        else:
            assert status in (401, 403), ("read allowed", actor, kind, whom, path, status, body)
        self._check(before, set(), refused=not allowed)

    # ---- proctoring ------------------------------------------------------------------------------------

    def _may_proctor(self, actor: str, kind: str, room: int | None) -> bool:
        a = self.actors[actor]
        if kind == "session" and a.session_token:
            return False
        return actor == "p1" and room == self.rooms[0]

    @rule(actor=st.sampled_from(["s1", "s2", "p1", "p2", "u"]), kind=st.sampled_from(TOKENS),
          whom=st.sampled_from(["s1", "s2"]), action=st.sampled_from(ACTIONS))  # fmt: skip
    def proctor_acts(self, actor: str, kind: str, whom: str, action: str) -> None:
        t = self.actors[whom]
        sid = self._sid_of(whom)
        body: dict[str, Any] = {"action": action, "reason": "checking"}
        if action == "extend":
            body["seconds"] = 30
        if action == "message":
            body["text"] = f"for {sid}"
        before = self.run(self._snapshot())

        async def go() -> tuple[int, Any]:
            async with self.http.post(f"/api/proctor/sessions/{sid}/actions", json=body,
                                      headers=self._auth(actor, kind)) as r:  # fmt: skip
                return r.status, await r.json()

        status, reply = self.run(go())
        allowed = self._may_proctor(actor, kind, t.template)
        if allowed:
            assert status in (200, 409), (actor, whom, action, status, reply)
            if status == 200 and action == "terminate":
                t.finished = True
        else:
            assert status in (401, 403), ("action allowed", actor, kind, whom, action, status, reply)
        self._check(before, {sid} if allowed else set(), refused=not allowed)

    @rule(actor=st.sampled_from(["s1", "s2", "p1", "p2", "u"]), whom=st.sampled_from(["s1", "s2"]))
    def read_audit(self, actor: str, whom: str) -> None:
        t = self.actors[whom]

        async def go() -> int:
            async with self.http.get(f"/api/proctor/sessions/{self._sid_of(whom)}/audit",
                                     headers=self._auth(actor, "user")) as r:  # fmt: skip
                return r.status

        before = self.run(self._snapshot())
        status = self.run(go())
        allowed = self._may_proctor(actor, "user", t.template)
        assert (status == 200) if allowed else status in (401, 403), (actor, whom, status)
        self._check(before, set(), refused=not allowed)

    @rule(actor=st.sampled_from(["s1", "s2", "p1", "p2", "u"]), kind=st.sampled_from(TOKENS), other_room=st.booleans())
    def subscribe_feed(self, actor: str, kind: str, other_room: bool) -> None:
        room = self.rooms[1] if other_room else self.rooms[0]
        before = self.run(self._snapshot())

        async def go() -> dict[str, Any]:
            ws = await self.http.ws_connect(f"/ws/proctor?template={room}",
                                            headers=self._auth(actor, kind))  # fmt: skip
            try:
                return json.loads((await ws.receive(timeout=10)).data)  # type: ignore[no-any-return]
            finally:
                await ws.close()

        frame = self.run(go())
        allowed = self._may_proctor(actor, kind, room)
        if allowed:
            assert frame["type"] == "snapshot" and frame["template"] == room, frame
            in_room = {a.sid for a in self.actors.values() if a.sid and a.template == room}
            assert {r["session"] for r in frame["sessions"]} <= in_room | self._others_in(room)
        else:
            assert frame["type"] == "error" and frame["code"] in ("unauthorized", "forbidden"), (actor, kind, frame)
        self._check(before, set(), refused=not allowed)

    def _others_in(self, room: int) -> set[str]:
        """Sessions of earlier machines in the same room (the rooms outlive one machine)."""
        return set(self.run(self.hub.services.store.room_members(room)))

    @invariant()
    def every_session_keeps_its_owner(self) -> None:
        """Whatever happened, each session still belongs to the student who started it."""

        async def owners() -> dict[str, str]:
            s = self.hub.services
            return {a.sid: await s.redis.hget(s.store.keys.session(a.sid).meta, "uid")
                    for a in self.actors.values() if a.sid is not None}  # fmt: skip

        found = self.run(owners())
        for a in self.actors.values():
            if a.sid is not None:
                assert found[a.sid] == str(self.hub.services.auth.verify_user(a.user_token).user_id)

    def teardown(self) -> None:
        async def close() -> None:
            for a in self.actors.values():
                if a.ws is not None:
                    await a.ws.close()

        self.run(close())


@pytest.fixture(scope="module")
def hub(database_url: str) -> Iterator[LiveHub]:
    settings = Settings(
        database_url=database_url, redis_url=REDIS_URL, redis_prefix=f"seciso{secrets.token_hex(4)}",
        secret="test-secret-" + "x" * 40, redis_durability=Durability.WARN, run_background=False,
        pg_pool_min=1, pg_pool_max=6, rate_ws_msgs=None, rate_rest_ip=None, rate_rest_user=None,
    )  # fmt: skip
    yield from live_hub(settings)


async def _rooms(hub: LiveHub) -> tuple[tuple[int, int], str, str]:
    s = hub.services
    bank = await s.pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    rooms = []
    for _ in range(2):
        rooms.append(int(await s.pool.fetchval(
            "INSERT INTO test_templates (slug, name, bank_id, config) VALUES ($1, 'isolation', $2, $3) RETURNING id",
            f"isolation-{secrets.token_hex(4)}", bank, {"count": 5, "duration_s": 3600, "grace_s": 1},
        )))  # fmt: skip
    tokens = []
    for name in ("assigned", "stranger"):
        user = await users_repo.create_user(s.pool, f"{name}-{secrets.token_hex(4)}", None, name, role="proctor")
        tokens.append(s.auth.user_token(user.id, Role.PROCTOR, 3600))
        if name == "assigned":
            await s.pool.execute("INSERT INTO proctor_assignments (user_id, template_id) VALUES ($1, $2)",
                                 user.id, rooms[0])  # fmt: skip
    return (rooms[0], rooms[1]), tokens[0], tokens[1]


@pytest.mark.timeout(1800)
def test_nobody_acts_where_they_do_not_belong(hub: LiveHub) -> None:
    Isolation.hub = hub
    Isolation.rooms, Isolation.proctor_token, Isolation.stranger_token = hub.run(_rooms(hub))
    run_state_machine_as_test(
        Isolation,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )  # fmt: skip
    assert TRIES["operations"] > EXAMPLES  # it ran: counts for docs/reliability.md printed with -s
    print(f"\nisolation state machine: {TRIES['machines']} machines, {TRIES['operations']} operations, "
          f"{TRIES['refused']} refused, 0 violations")  # fmt: skip
