"""Locust users for examhub: students over WebSocket, proctors watching a room, REST readers.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080                      # web UI on :8089
    locust -f loadtest/locustfile.py --headless -u 200 -r 20 -t 2m --host http://127.0.0.1:8080 --csv out

Students speak the browser's protocol (docs/protocol.md) with websocket-client, a synchronous client that
gevent makes cooperative (as locust-plugins' WebSocket users do): start a session over REST, connect, answer
with think time, send anti-cheat events, sometimes drop the connection (with an answer in flight) and resume
it, and submit when the paper is done. The WebSocket figures are reported as locust request events, so
locust's statistics, CSV files and web UI show them beside the REST calls:

    WS  connect+state    connect to the first `state` frame
    WS  answer ack       an `answer` sent -> its `ack`
    WS  event ack        an anti-cheat `event` -> its `ack`
    WS  resume           a dropped connection -> the `state` frame of the new one (unacked message resent)
    WS  submit           `submit` -> the `finished` frame
    WS  proctor snapshot a proctor connects -> the room's snapshot
    WS  proctor update   each update frame received (response time 0; the size is the frame's)

Proctors need a staff account: set EXAMHUB_LOCUST_ADMIN and EXAMHUB_LOCUST_PASSWORD (an admin, who may
watch every room). Without them the proctor and staff REST users stop at start. EXAMHUB_LOCUST_TEMPLATE
picks the students' template (default biology-quick-10).

Locust's cost per user (a greenlet, a socket, Python-level frame handling) caps one process at a few
thousand mostly idle users on two cores; the 10,000-student figures of docs/performance.md come from the
asyncio driver (loadtest/run.py).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import gevent
import websocket
from locust import HttpUser, between, events, task
from locust.exception import StopUser

TEMPLATE = os.environ.get("EXAMHUB_LOCUST_TEMPLATE", "biology-quick-10")
ADMIN = os.environ.get("EXAMHUB_LOCUST_ADMIN")
PASSWORD = os.environ.get("EXAMHUB_LOCUST_PASSWORD")
KINDS = ("tab_hidden", "tab_visible", "blur", "focus", "copy")
RECV_TIMEOUT_S = 10.0


def fire(name: str, started: float, length: int = 0, exc: Exception | None = None) -> None:
    events.request.fire(request_type="WS", name=name, response_time=(time.perf_counter() - started) * 1000,
                        response_length=length, exception=exc, context={})  # fmt: skip


def ws_url(host: str, path: str) -> str:
    return host.replace("http", "ws", 1).rstrip("/") + path


class ProtocolError(Exception):
    pass


def template_id(user: HttpUser) -> int:
    for t in user.client.get("/api/templates", name="/api/templates").json()["templates"]:
        if t["slug"] == TEMPLATE:
            return int(t["id"])
    raise StopUser(f"no template {TEMPLATE!r}")


class StudentUser(HttpUser):
    """A student sitting an exam: think, answer, sometimes report a tab switch, sometimes lose the connection."""

    weight = 20
    wait_time = between(0.5, 2.0)  # think time between actions

    def on_start(self) -> None:
        r = self.client.post("/api/auth/guest", json={"display_name": f"locust {random.randrange(10**6)}"})
        self.user_token = r.json()["token"]
        self.template = template_id(self)
        self.ws: websocket.WebSocket | None = None
        self.begin()

    def on_stop(self) -> None:
        self.drop()

    # -- the session

    def begin(self) -> None:
        r = self.client.post("/api/sessions", json={"template_id": self.template}, name="/api/sessions",
                             headers={"Authorization": f"Bearer {self.user_token}"})  # fmt: skip
        if r.status_code != 201:
            raise StopUser(f"POST /api/sessions: {r.status_code}")
        body = r.json()
        self.sid, self.token = body["session_id"], body["token"]
        self.connect("connect+state")

    def connect(self, name: str) -> None:
        t0 = time.perf_counter()
        try:
            self.ws = websocket.create_connection(ws_url(self.host, f"/ws/student?token={self.token}"),
                                                  timeout=RECV_TIMEOUT_S, enable_multithread=False)  # fmt: skip
            state = self.recv()
            if state["type"] != "state":
                raise ProtocolError(f"expected state, got {state}")
        except Exception as exc:
            fire(name, t0, exc=exc)
            self.drop()
            raise StopUser(f"{name}: {exc}") from exc
        fire(name, t0, len(json.dumps(state)))
        self.seq = state["last_seq"]
        self.questions = {q["id"]: [o["id"] for o in q["options"]] for q in state["questions"]}
        self.todo = [q for q in self.questions if str(q) not in state["answers"]]
        random.shuffle(self.todo)

    def drop(self) -> None:
        """Lose the connection the way a network does: no closing handshake."""
        if self.ws is not None:
            try:
                self.ws.shutdown()
            finally:
                self.ws = None

    def recv(self) -> dict[str, Any]:
        assert self.ws is not None
        data = self.ws.recv()
        if not data:
            raise ProtocolError("connection closed")
        frame: dict[str, Any] = json.loads(data)
        return frame

    def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps(frame))

    def reply_to(self, seq: int) -> dict[str, Any]:
        """Read until the reply to `seq` (pushes such as `warning` or `message` are skipped)."""
        while True:
            frame = self.recv()
            if frame.get("seq") == seq and frame["type"] in ("ack", "error"):
                return frame
            if frame["type"] == "finished":
                raise ProtocolError("the session finished")

    def sequenced(self, name: str, frame: dict[str, Any]) -> bool:
        self.seq += 1
        frame["seq"] = self.seq
        t0 = time.perf_counter()
        try:
            self.send(frame)
            reply = self.reply_to(self.seq)
            if reply["type"] != "ack":
                raise ProtocolError(f"{reply.get('code')}: {reply.get('message')}")
        except Exception as exc:
            fire(name, t0, exc=exc)
            self.drop()
            self.connect("resume")
            return False
        fire(name, t0, 32)
        return True

    # -- what a student does

    @task(20)
    def answer(self) -> None:
        if not self.todo:
            self.submit()
            return
        q = self.todo[-1]
        if self.sequenced("answer ack", {"type": "answer", "q": q, "choice": random.choice(self.questions[q]),
                                         "time_ms": random.randrange(2000, 60000)}):  # fmt: skip
            self.todo.pop()

    @task(2)
    def anticheat(self) -> None:
        self.sequenced("event ack", {"type": "event", "kind": random.choice(KINDS)})

    @task(1)
    def lose_connection(self) -> None:
        """Send an answer and drop before its ack: after resuming, resend it with the same seq if the state
        frame's last_seq does not cover it (the server acks a duplicate either way)."""
        if not self.todo:
            return
        q = self.todo[-1]
        self.seq += 1
        frame = {"type": "answer", "seq": self.seq, "q": q, "choice": random.choice(self.questions[q])}
        self.send(frame)
        self.drop()
        gevent.sleep(random.random())  # offline for a moment
        t0 = time.perf_counter()
        self.connect("resume")  # last_seq and the saved answers come back in the state frame
        if self.seq < frame["seq"]:  # the answer did not reach Redis: resend it with the same seq
            self.seq = frame["seq"]
            self.send(frame)
            reply = self.reply_to(frame["seq"])
            fire("resume resend", t0, exc=None if reply["type"] == "ack" else ProtocolError(str(reply)))
            if reply["type"] == "ack" and q in self.todo:
                self.todo.remove(q)

    def submit(self) -> None:
        self.seq += 1
        t0 = time.perf_counter()
        try:
            self.send({"type": "submit", "seq": self.seq})
            while (frame := self.recv())["type"] != "finished":
                if frame["type"] == "error" and frame.get("seq") == self.seq:
                    raise ProtocolError(f"{frame.get('code')}: {frame.get('message')}")
        except Exception as exc:
            fire("submit", t0, exc=exc)
        else:
            fire("submit", t0, len(json.dumps(frame)))
            self.client.get(f"/api/sessions/{self.sid}/result", name="/api/sessions/{sid}/result",
                            headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        self.drop()
        self.begin()  # the next attempt


def staff_token(user: HttpUser) -> str:
    if not (ADMIN and PASSWORD):
        raise StopUser("set EXAMHUB_LOCUST_ADMIN and EXAMHUB_LOCUST_PASSWORD for staff users")
    r = user.client.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD}, name="/api/auth/login")
    if r.status_code != 200:
        raise StopUser(f"login: {r.status_code}")
    return str(r.json()["token"])


class ProctorUser(HttpUser):
    """A proctor with the room's feed open who now and then acts on a session (flag, message)."""

    fixed_count = int(os.environ.get("EXAMHUB_LOCUST_PROCTORS", "1"))  # a room has a few, whatever the crowd
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        self.token = staff_token(self)
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.template = template_id(self)
        self.sessions: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        try:
            self.ws = websocket.create_connection(ws_url(self.host, f"/ws/proctor?template={self.template}"),
                                                  header=[f"Authorization: Bearer {self.token}"],
                                                  timeout=RECV_TIMEOUT_S)  # fmt: skip
            snapshot = json.loads(self.ws.recv())
            if snapshot["type"] != "snapshot":
                raise ProtocolError(f"expected snapshot, got {snapshot['type']}")
        except Exception as exc:
            fire("proctor snapshot", t0, exc=exc)
            raise StopUser(str(exc)) from exc
        fire("proctor snapshot", t0, len(json.dumps(snapshot)))
        self.sessions = {row["session"]: row for row in snapshot["sessions"]}
        self.reader = gevent.spawn(self.read_feed)

    def on_stop(self) -> None:
        self.reader.kill()
        self.ws.close()

    def read_feed(self) -> None:
        while True:
            try:
                data = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:
                fire("proctor update", time.perf_counter(), exc=exc)
                return
            frame = json.loads(data)
            if frame["type"] == "update":
                for row in frame["sessions"]:
                    self.sessions[row["session"]] = row
                events.request.fire(request_type="WS", name="proctor update", response_time=0,
                                    response_length=len(data), exception=None, context={})  # fmt: skip

    @task(3)
    def flag(self) -> None:
        live = [s for s, row in self.sessions.items() if row.get("status") in ("active", "created")]
        if live:
            action = random.choice(("flag", "unflag"))
            self.client.post(f"/api/proctor/sessions/{random.choice(live)}/actions", json={"action": action},
                             headers=self.auth, name=f"/api/proctor/sessions/{{sid}}/actions [{action}]")  # fmt: skip

    @task(1)
    def message(self) -> None:
        live = [s for s, row in self.sessions.items() if row.get("status") == "active"]
        if live:
            self.client.post(f"/api/proctor/sessions/{random.choice(live)}/actions", headers=self.auth,
                             json={"action": "message", "text": "Five minutes left."},
                             name="/api/proctor/sessions/{sid}/actions [message]")  # fmt: skip


class ContentUser(HttpUser):
    """Someone browsing templates and statistics: the cached REST reads."""

    weight = 2
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        r = self.client.post("/api/auth/guest", json={"display_name": "locust reader"})
        self.auth = {"Authorization": f"Bearer {r.json()['token']}"}
        self.template = template_id(self)

    @task(3)
    def templates(self) -> None:
        self.client.get("/api/templates")
        self.client.get(f"/api/templates/{self.template}", name="/api/templates/{id}")

    @task(2)
    def analytics(self) -> None:
        self.client.get("/api/analytics/global", headers=self.auth)
        self.client.get(f"/api/templates/{self.template}/leaderboard", headers=self.auth,
                        name="/api/templates/{id}/leaderboard")  # fmt: skip

    @task(1)
    def my_performance(self) -> None:
        self.client.get("/api/users/me/performance", headers=self.auth)


class StaffUser(HttpUser):
    """An administrator's dashboard: topic analytics and scores (staff-only reads)."""

    fixed_count = 1
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        self.auth = {"Authorization": f"Bearer {staff_token(self)}"}
        self.template = template_id(self)

    @task
    def dashboard(self) -> None:
        self.client.get(f"/api/analytics/topics?template_id={self.template}", headers=self.auth,
                        name="/api/analytics/topics")  # fmt: skip
        self.client.get(f"/api/templates/{self.template}/scores", headers=self.auth,
                        name="/api/templates/{id}/scores")  # fmt: skip
