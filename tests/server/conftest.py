from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.services import SERVICES, Services
from server.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ROOT = Path(__file__).resolve().parents[2]


class Student:
    """A test student speaking the wire protocol over a real WebSocket."""

    def __init__(self, client: TestClient[Any, Any], token: str, sid: str, binary: bool = False) -> None:
        self.client = client
        self.token = token
        self.sid = sid
        self.binary = binary
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.state: dict[str, Any] = {}

    async def connect(self, expect_state: bool = True, **headers: str) -> dict[str, Any]:
        fmt = "&format=msgpack" if self.binary else ""
        self.ws = await self.client.ws_connect(f"/ws/student?token={self.token}{fmt}", headers=headers)
        if expect_state:
            self.state = await self.recv()
            assert self.state["type"] == "state", self.state
            self.seq = max(self.seq, self.state["last_seq"])
        return self.state

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        if self.binary:
            await self.ws.send_bytes(msgpack.packb(frame))
        else:
            await self.ws.send_str(json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data: dict[str, Any] = json.loads(msg.data)
            return data
        if msg.type == aiohttp.WSMsgType.BINARY:
            data = msgpack.unpackb(msg.data)
            return data
        return {"type": "closed", "code": self.ws.close_code, "msg_type": msg.type.name}

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return the close code."""
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == "closed":
                return frame["code"]  # type: ignore[no-any-return]

    async def answer(self, q: int, choice: str | None, seq: int | None = None, **extra: Any) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        await self.send({"type": "answer", "seq": seq, "q": q, "choice": choice, **extra})
        return await self.recv()

    async def event(self, kind: str) -> list[dict[str, Any]]:
        self.seq += 1
        await self.send({"type": "event", "seq": self.seq, "kind": kind})
        frames = [await self.recv()]
        while frames[-1]["type"] == "ack":
            # a warning may follow the ack; read it if it is there
            assert self.ws is not None
            try:
                nxt = await self.recv(timeout=0.3)
            except TimeoutError:
                break
            frames.append(nxt)
        return frames

    def questions(self) -> list[dict[str, Any]]:
        return self.state["questions"]  # type: ignore[no-any-return]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


def services(client: TestClient[Any, Any]) -> Services:
    return client.app[SERVICES]  # type: ignore[index]


async def guest(client: TestClient[Any, Any], name: str = "Asha") -> str:
    r = await client.post("/api/auth/guest", json={"display_name": name})
    assert r.status == 201
    token: str = (await r.json())["token"]
    return token


async def start(client: TestClient[Any, Any], template_id: int, user_token: str | None = None) -> dict[str, Any]:
    token = user_token or await guest(client)
    r = await client.post(
        "/api/sessions", json={"template_id": template_id}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def student(client: TestClient[Any, Any], template_id: int, binary: bool = False) -> Student:
    started = await start(client, template_id)
    return Student(client, started["token"], started["session_id"], binary)


async def token_for(client: TestClient[Any, Any], role: str, tier: str = "enrolled") -> str:
    """A user of that role, created directly, and a token for it."""
    import secrets

    from server.auth import Role
    from storage import users as repo

    s = services(client)
    user = await repo.create_user(s.pool, f"{role}-{secrets.token_hex(4)}", None, role, tier=tier, role=role)
    return s.auth.user_token(user.id, Role(role), 3600)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- a hub in its own process (tests of `examhub serve` killed and restarted) -------------------------------------


def serve_process(database_url: str, prefix: str, data_dir: Path, port: int, log: Path, *args: str,
                  cluster_url: str | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """`examhub serve [args]` on real PostgreSQL and Redis (with `cluster_url`, that Redis Cluster), its output
    (stdout and stderr) in `log`."""
    from tests.conftest import REDIS_URL

    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": cluster_url or REDIS_URL,
           "EXAMHUB_REDIS_PREFIX": prefix, "EXAMHUB_SECRET": "s" * 48, "EXAMHUB_REDIS_DURABILITY": "warn",
           "EXAMHUB_DATA_DIR": str(data_dir), "EXAMHUB_PORT": str(port),
           **({"EXAMHUB_REDIS_CLUSTER": "1"} if cluster_url else {})}  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "server.cli", "serve", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


async def logged(log: Path, text: str, within_s: float = 60.0) -> None:
    """Until `text` is in the file `log`."""
    for _ in range(int(within_s / 0.05)):
        if text in text_of(log):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log.name}:\n{text_of(log)[-3000:]}")


def text_of(log: Path) -> str:
    return log.read_text(errors="replace")


async def quick_template_id(database_url: str) -> int:
    """The seeded 10-question template's id in that database."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        tid: int = await conn.fetchval("SELECT id FROM test_templates WHERE slug = 'biology-quick-10'")
    finally:
        await conn.close()
    return tid


async def start_live(http: aiohttp.ClientSession, base: str, template_id: int) -> tuple[str, str]:
    """A guest starts a session on the hub at `base`: (its id, its WebSocket URL)."""
    async with http.post(base + "/api/auth/guest", json={"display_name": "Ira"}) as r:
        token = (await r.json())["token"]
    async with http.post(base + "/api/sessions", json={"template_id": template_id},
                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        started = await r.json()
    return started["session_id"], f"{base.replace('http', 'ws')}/ws/student?token={started['token']}"


async def first_answer_acked(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read the state frame, answer the first question (seq 1) and wait for its ack."""
    state = json.loads((await ws.receive(timeout=10)).data)
    q = state["questions"][0]
    await ws.send_str(json.dumps({"type": "answer", "seq": 1, "q": q["id"], "choice": q["options"][0]["id"]}))
    while (frame := json.loads((await ws.receive(timeout=10)).data))["type"] != "ack":
        pass
    assert frame["seq"] == 1
