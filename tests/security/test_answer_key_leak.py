"""No answer key reaches a student before the attempt ends.

A bank is authored over the REST API (as an admin) whose every question has a random option id layout, a
correct option whose text is a canary (KEY...), wrong options (OPT...) and an explanation that is a canary
(WHY...). Two students sit the same exam: one answers every question correctly, one every question wrongly.
Everything either can receive before the end is recorded: each WebSocket frame (state, ack, error, warning,
time, clock, message, superseded, the state after a reconnect and after a takeover) and each REST body a
student may ask for (templates, banks, practice draws, progress, result and rank before the end, performance,
attempts, staff endpoints it is refused). Then:

- no explanation canary appears anywhere;
- a correct option's text appears only where every option is offered (the question's option list), never on
  its own (an error message, a warning, a field);
- no field names the key (`correct`, `is_correct`, `explanation`, ...) other than as a number (the marks a
  right answer earns, a count over finished attempts);
- the right-answering and the wrong-answering student receive the same frames and bodies once the things that
  are theirs by right are set aside (their own choices, ids, clocks): an ack to a right answer is
  indistinguishable from an ack to a wrong one, so no side channel tells them apart;
- after the end the result does show the keys and explanations (so the detectors above can fire).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.server.conftest import Student, bearer, token_for

KEY_FIELDS = {"correct", "is_correct", "explanation", "correct_option", "answer_key", "key", "right", "solution"}


class Recording(Student):
    """A student whose every received frame is kept."""

    def __init__(self, *args: Any, log: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await super().recv(timeout)
        self.log.append(frame)
        return frame


async def author_bank(client: TestClient[Any, Any], admin: str) -> tuple[int, int, dict[int, dict[str, Any]]]:
    """A bank of 14 canary questions and a 10-question template over it; returns (bank, template, key by id)."""
    tag = secrets.token_hex(4)
    r = await client.post("/api/banks", json={"slug": f"canary-{tag}", "name": "Canary bank"}, headers=bearer(admin))
    assert r.status == 201, await r.text()
    bank = (await r.json())["id"]
    keys: dict[int, dict[str, Any]] = {}
    for i, level in enumerate(["easy"] * 4 + ["medium"] * 6 + ["hard"] * 4):
        ids = [secrets.token_hex(3) for _ in range(4)]  # option ids carry no hint of the key
        correct = secrets.choice(ids)
        body = {
            "topic": ["cells", "genes"][i % 2], "difficulty": level,
            "text": f"Canary question {tag} number {i}: which one?",
            "options": [{"id": o, "text": ("KEY" if o == correct else "OPT") + secrets.token_hex(8)} for o in ids],
            "correct": correct, "explanation": f"WHY{secrets.token_hex(8)}",
        }  # fmt: skip
        r = await client.post("/api/questions", json=body, headers=bearer(admin))
        assert r.status == 201, await r.text()
        q = await r.json()
        keys[q["id"]] = {"correct": correct, "wrong": next(o for o in ids if o != correct),
                         "key_text": next(o["text"] for o in body["options"] if o["id"] == correct),
                         "why": body["explanation"]}  # fmt: skip
    r = await client.post(f"/api/banks/{bank}/questions", json={"question_ids": list(keys)}, headers=bearer(admin))
    assert r.status == 200, await r.text()
    config = {"count": 10, "duration_s": 600, "topics": [], "shuffle_options": True}
    r = await client.post("/api/templates", json={"slug": f"canary-{tag}", "name": "Canary exam", "bank_id": bank,
                                                  "config": config}, headers=bearer(admin))  # fmt: skip
    assert r.status == 201, await r.text()
    return bank, (await r.json())["id"], keys


async def sit(client: TestClient[Any, Any], admin: str, bank: int, tid: int, keys: dict[int, dict[str, Any]],
              right: bool) -> tuple[list[Any], Recording]:  # fmt: skip
    """One student's whole attempt up to (not including) the end; everything received, in order."""
    log: list[Any] = []
    user = await token_for(client, "student")

    async def rest(method: str, path: str, token: str = user, **kw: Any) -> None:
        r = await client.request(method, path, headers=bearer(token), **kw)
        log.append({"rest": f"{method} {path}", "status": r.status, "body": json.loads(await r.text() or "null")})

    await rest("GET", "/api/templates")
    await rest("GET", f"/api/templates/{tid}")
    await rest("GET", f"/api/banks/{bank}")
    await rest("GET", "/api/banks")
    await rest("GET", f"/api/banks/{bank}/questions")  # staff only: refused
    await rest("GET", f"/api/questions/random?bank_id={bank}&topic=cells&count=20")  # practice (cached path)
    await rest("GET", f"/api/questions/random?bank_id={bank}&count=20")
    await rest("GET", f"/api/questions/{next(iter(keys))}")  # staff only: refused
    await rest("GET", f"/api/questions?bank_id={bank}")  # staff only: refused
    r = await client.post("/api/sessions", json={"template_id": tid}, headers=bearer(user))
    started = await r.json()
    log.append({"rest": "POST /api/sessions", "status": r.status, "body": started})
    sid, token = started["session_id"], started["token"]
    st = Recording(client, token, sid, log=log)
    await st.connect()
    mine = st.questions()
    for q in mine:
        k = keys[q["id"]]
        assert (await st.answer(q["id"], k["correct"] if right else k["wrong"]))["type"] == "ack"
    q0 = mine[0]
    await st.answer(q0["id"], "zzzzzzzz", seq=st.seq + 1)  # not an option: error
    await st.answer(max(keys) + 1000, "a", seq=st.seq + 1)  # not in the paper: error
    await st.answer(q0["id"], keys[q0["id"]]["correct"], seq=1)  # an old seq: a duplicate ack
    await st.event("tab_hidden")  # ack and warning
    st.seq += 1
    await st.send({"type": "heartbeat", "seq": st.seq})
    await st.recv()  # time
    for action in ({"action": "extend", "seconds": 60, "reason": "late start"}, {"action": "message", "text": "hi"}):
        # staff act (their response is staff's view, not recorded); the student receives a clock / message frame
        r = await client.post(f"/api/proctor/sessions/{sid}/actions", json=action, headers=bearer(admin))
        assert r.status == 200, await r.text()
        await st.recv()
    for path in ("", "/result", "/rank"):
        await rest("GET", f"/api/sessions/{sid}{path}", token)
        await rest("GET", f"/api/sessions/{sid}{path}")
    await rest("GET", "/api/users/me/performance")
    await rest("GET", "/api/users/me/attempts")
    await rest("GET", f"/api/templates/{tid}/leaderboard")
    # a dropped connection and a resume, then a takeover by a second connection
    assert st.ws is not None
    await st.ws.close()
    await st.connect()
    second = Recording(client, token, sid, log=log)
    await second.connect()
    await st.closed()  # superseded
    return log, second


def walk(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Yield (path, key, value) for every dict entry and (path, None, value) for every leaf."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k, v
            yield from walk(v, (*path, str(k)))
    elif isinstance(value, list):
        for v in value:
            yield from walk(v, path)
    else:
        yield path, None, value


def without_option_lists(value: Any) -> Any:
    """The value with every offered option list (each option's id and text) removed."""
    if isinstance(value, dict):
        return {k: ("<options>" if k == "options" and isinstance(v, list) else without_option_lists(v))
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [without_option_lists(v) for v in value]
    return value


VOLATILE = {"session", "session_id", "token", "ws_url", "server_time_ms", "deadline_ms", "time_left_ms", "epoch",
            "retry_after_ms", "user_id", "at_ms", "choice", "questions", "time_ms", "created_at", "started_at", "id",
            "user", "name", "display_name", "rank", "percentile", "message"}  # fmt: skip


def answer_fields(answers: Any) -> Any:
    """Saved answers are keyed by question id (each paper has its own): keep what each one carries."""
    if not isinstance(answers, dict):
        return normalized(answers)
    return sorted(sorted(normalized(a).items()) for a in answers.values() if isinstance(a, dict))


def normalized(value: Any) -> Any:
    """What must not depend on whether the answers were right: the frames minus what is the student's own
    (ids, clocks, its choices, its paper's order), minus the questions (their ids and order differ)."""
    if isinstance(value, dict):
        return {k: normalized(v) if k != "answers" else answer_fields(v)
                for k, v in sorted(value.items()) if k not in VOLATILE}  # fmt: skip
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"[0-9a-f]{32}", "<session>", value)  # session ids in paths
    return value


async def test_no_answer_key_reaches_a_student_before_the_end(client: TestClient[Any, Any]) -> None:
    admin = await token_for(client, "admin")
    bank, tid, keys = await author_bank(client, admin)
    right_log, right = await sit(client, admin, bank, tid, keys, right=True)
    wrong_log, _ = await sit(client, admin, bank, tid, keys, right=False)
    assert len(right_log) > 40  # everything above was recorded
    kinds = {f.get("type") for f in right_log} | {f.get("rest") for f in right_log}
    for kind in ("state", "ack", "error", "warning", "time", "clock", "message", "closed",
                 f"GET /api/questions/random?bank_id={bank}&count=20"):  # fmt: skip
        assert kind in kinds, kind
    assert any(f.get("code") == "superseded" for f in right_log)

    for log in (right_log, wrong_log):
        text = json.dumps(log)
        for k in keys.values():
            assert k["why"] not in text, "an explanation reached the student before the end"
        rest_of_it = json.dumps(without_option_lists(log))
        assert "KEY" not in rest_of_it, "a correct option's text appears outside an option list"
        for path, key, value in walk(log):
            # a number is marks (the scheme's `correct`) or a count of right answers over finished attempts (null
            # while this one runs); the comparison of the two students below shows no count moves with its answers
            count = value is None or (isinstance(value, int) and not isinstance(value, bool))
            if key in KEY_FIELDS and not count:
                pytest.fail(f"a field named {key!r} at {'/'.join(path)}: {value!r}")
        # every option list offered holds all of a question's options (the key is not singled out)
        for _, key, value in walk(log):
            if key == "options" and isinstance(value, list) and value:
                texts = [o["text"] for o in value]
                assert len(texts) == 4 and sum(t.startswith("KEY") for t in texts) == 1, texts

    assert normalized(right_log) == normalized(wrong_log), "right and wrong answers are told apart"

    # after the end the review shows the keys: the detectors above would have seen them
    right.seq += 1
    await right.send({"type": "submit", "seq": right.seq})
    assert (await right.recv())["type"] == "ack"
    assert (await right.recv())["type"] == "finished"
    r = await client.get(f"/api/sessions/{right.sid}/result", headers=bearer(right.token))
    review = await r.text()
    assert r.status == 200 and "WHY" in review and '"correct"' in review
    assert sum(k["why"] in review for k in keys.values()) == 10
