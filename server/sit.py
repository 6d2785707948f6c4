"""`examhub sit`: a student in the terminal, speaking the same protocol as the browser page."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import msgpack


class _Student:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    async def send(self, frame: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send_bytes(msgpack.packb(frame))
        else:
            await self.ws.send_str(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            data: dict[str, Any] = json.loads(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            data = msgpack.unpackb(msg.data)
        else:
            raise ConnectionError(f"connection closed ({self.ws.close_code})")
        return data

    async def until(self, kind: str, seq: int | None = None) -> dict[str, Any]:
        while True:
            frame = await self.receive()
            if frame["type"] == kind and (seq is None or frame.get("seq") == seq):
                return frame
            if frame["type"] == "error" and frame.get("seq") == seq:
                return frame
            if frame["type"] == "warning":
                print(f"  ! {frame['message']}")
            if frame["type"] == "finished":
                return frame


async def sit(url: str, template: str, name: str, *, auto: bool, binary: bool) -> int:
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post("/api/auth/guest", json={"display_name": name}) as r:
            token = (await r.json())["token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get("/api/templates") as r:
            found = [t for t in (await r.json())["templates"] if template in (t["slug"], str(t["id"]))]
        if not found:
            print(f"no template {template!r}")
            return 1
        async with http.post("/api/sessions", json={"template_id": found[0]["id"]}, headers=auth) as r:
            started = await r.json()
        ws_url = started["ws_url"] + ("&format=msgpack" if binary else "")
        print(f"{found[0]['name']}: session {started['session_id']}")
        async with http.ws_connect(ws_url) as ws:
            student = _Student(ws, binary)
            state = await student.receive()
            seq = state["last_seq"]
            adaptive = "adaptive" in state  # one item at a time, each chosen from the answers so far; no skips
            total = f"up to {started['questions']}" if adaptive else str(len(state["questions"]))
            print(f"{total} questions, {state['time_left_ms'] // 1000} s on the server's clock")
            queue = state["questions"][-1:] if adaptive else state["questions"]
            done: dict[str, Any] = {}
            n = 0
            while queue and not done:
                q = queue.pop(0)
                n += 1
                choice = await _choose(n, q, auto, skip=not adaptive)
                seq += 1
                await student.send({"type": "answer", "seq": seq, "q": q["id"], "choice": choice, "time_ms": 1000})
                reply = await student.until("ack", seq)
                if reply["type"] == "finished":
                    done = reply
                elif reply["type"] != "ack":
                    print(f"  not saved: {reply.get('message')}")
                elif adaptive:
                    following = await student.until("item")
                    if following["type"] == "finished":
                        done = following
                    else:
                        queue.append(following["question"])
            if not done:
                seq += 1
                await student.send({"type": "submit", "seq": seq})
                done = await student.until("finished")
        res = done["result"]
        if done.get("ability"):
            a = done["ability"]
            print(f"\nAbility {a['theta']:+.2f} (SE {a['se']:.2f}), scaled {a['scaled']}, after {a['items']} items")
        print(f"\nSubmitted ({done['reason']}): score {res['score']} / {res['max_score']} "
              f"({res['correct']} right, {res['wrong']} wrong, {res['skipped']} skipped)")  # fmt: skip
        for topic, t in res["topics"].items():
            print(f"  {topic:<28} {t['score']:>4} / {t['max_score']:<4} ({t['correct']} right, {t['wrong']} wrong)")
        print(f"Review with explanations: {url}/api/sessions/{started['session_id']}/result (session token)")
    return 0


async def _choose(n: int, q: dict[str, Any], auto: bool, skip: bool = True) -> str | None:
    ids: list[str] = [o["id"] for o in q["options"]]
    if auto:
        return None if skip and random.random() < 0.1 else random.choice(ids)
    print(f"\nQ{n} [{q['topic']}] {q['text']}")
    for i, o in enumerate(q["options"], 1):
        print(f"   {i}. {o['text']}")
    while True:
        raw = (await asyncio.to_thread(input, "answer 1-4, or Enter to skip: " if skip else "answer 1-4: ")).strip()
        if not raw and skip:
            return None
        if raw.isdigit() and 1 <= int(raw) <= len(ids):
            return ids[int(raw) - 1]
