"""Questions over REST: authoring, validation, duplicates, review, search, random draws, and edits that keep
history (a question some paper holds is replaced, never rewritten)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.closecodes import Close
from tests.server.conftest import Student, bearer, services, start, token_for

Client = TestClient[Any, Any]


async def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["error"] == code and body["message"]
    return body


def body(topic: str = "genetics", **over: Any) -> dict[str, Any]:
    """A valid create body with a text no other test uses."""
    base: dict[str, Any] = {
        "topic": topic, "difficulty": "easy",
        "text": f"Which base pairs with adenine in DNA (case {secrets.token_hex(6)})?",
        "options": [{"id": "a", "text": "Thymine"}, {"id": "b", "text": "Guanine"}, {"id": "c", "text": "Uracil"}],
        "correct": "a", "explanation": "A pairs with T.",
    }  # fmt: skip
    return {**base, **over}


def unique_topic() -> str:
    return f"t-{secrets.token_hex(5)}"


class Tokens:
    def __init__(self, admin: str, proctor: str, student: str) -> None:
        self.admin, self.proctor, self.student = admin, proctor, student


async def tokens(client: Client) -> Tokens:
    return Tokens(*[await token_for(client, role) for role in ("admin", "proctor", "student")])


async def create(client: Client, admin: str, **over: Any) -> dict[str, Any]:
    r = await client.post("/api/questions", json=body(**over), headers=bearer(admin))
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def new_bank(client: Client, admin: str, **over: Any) -> dict[str, Any]:
    payload = {"slug": f"bank-{secrets.token_hex(5)}", "name": "Test bank", **over}
    r = await client.post("/api/banks", json=payload, headers=bearer(admin))
    assert r.status == 201, await r.text()
    data: dict[str, Any] = await r.json()
    return data


async def add_to_bank(client: Client, admin: str, bank_id: int, ids: list[int]) -> None:
    r = await client.post(f"/api/banks/{bank_id}/questions", json={"question_ids": ids}, headers=bearer(admin))
    assert r.status == 200, await r.text()


# ---- create, read, roles, validation -------------------------------------------------------------------


async def test_create_and_read_by_role(client: Client) -> None:
    t = await tokens(client)
    created = await create(client, t.admin, ref=f"ref-{secrets.token_hex(4)}", marks=2, curriculum="NCERT")
    assert created["verification_status"] == "unverified" and created["correct"] == "a"
    assert created["marks"] == 2 and created["curriculum"] == "NCERT" and created["retired_at"] is None
    qid = created["id"]
    r = await client.get(f"/api/questions/{qid}", headers=bearer(t.proctor))
    assert r.status == 200 and (await r.json()) == created
    await error(await client.get(f"/api/questions/{qid}", headers=bearer(t.student)), 403, "forbidden")
    await error(await client.get(f"/api/questions/{qid}"), 401, "unauthorized")
    for who in (t.proctor, t.student):
        await error(await client.post("/api/questions", json=body(), headers=bearer(who)), 403, "forbidden")
    await error(await client.post("/api/questions", json=body()), 401, "unauthorized")
    await error(await client.get("/api/questions/999999999999", headers=bearer(t.proctor)), 404, "question_not_found")
    await error(await client.get(f"/api/questions/{2**64}", headers=bearer(t.proctor)), 404, "not_found")


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"correct": "d"}, "not one of the option ids"),
        ({"options": [{"id": "a", "text": "only one"}], "correct": "a"}, "options"),
        ({"options": [{"id": c, "text": c} for c in "abcdefg"], "correct": "a"}, "options"),
        ({"options": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "correct": "a"}, "unique"),
        ({"options": [{"id": "a!", "text": "x"}, {"id": "b", "text": "y"}], "correct": "b"}, "options.0.id"),
        ({"text": ""}, "text"),
        ({"text": "x" * 2001}, "text"),
        ({"topic": "Not A Slug"}, "topic"),
        ({"difficulty": "impossible"}, "difficulty"),
        ({"marks": 0}, "marks"),
        ({"marks": 10**20}, "marks"),
        ({"category": "c" * 61}, "category"),
        ({"verification_status": "verified"}, "verification_status"),
        ({"text": None}, "text"),
    ],
)
async def test_create_validation(client: Client, over: dict[str, Any], fragment: str) -> None:
    admin = await token_for(client, "admin")
    r = await client.post("/api/questions", json=body(**over), headers=bearer(admin))
    err = await error(r, 422, "invalid_body")
    assert fragment in err["message"]


async def test_create_needs_json(client: Client) -> None:
    admin = await token_for(client, "admin")
    r = await client.post("/api/questions", data="text=hello", headers=bearer(admin))
    await error(r, 415, "unsupported_media_type")
    r = await client.post("/api/questions", data=b"{", headers={**bearer(admin), "Content-Type": "application/json"})
    await error(r, 422, "invalid_body")


# ---- duplicates ----------------------------------------------------------------------------------------


async def test_duplicate_text_is_409_unless_allowed_and_listed_in_groups(client: Client) -> None:
    t = await tokens(client)
    first = await create(client, t.admin)
    # same words, other case, spacing and punctuation: the same normalized text
    same = "  " + first["text"].upper().replace("?", " !!") + " "
    r = await client.post("/api/questions", json=body(text=same), headers=bearer(t.admin))
    err = await error(r, 409, "duplicate_question")
    assert err["existing_id"] == first["id"] and "allow_duplicate" in err["message"]
    r = await client.post("/api/questions", json=body(text=same, allow_duplicate=True), headers=bearer(t.admin))
    assert r.status == 201, await r.text()
    second = (await r.json())["id"]

    groups = await fetch_all_groups(client, t.proctor)
    assert [first["id"], second] in [g["ids"] for g in groups]
    await error(await client.get("/api/questions/duplicates", headers=bearer(t.student)), 403, "forbidden")

    # a retired question no longer counts as a duplicate, nor stays in the groups
    assert (await client.delete(f"/api/questions/{second}", headers=bearer(t.admin))).status == 200
    assert [first["id"], second] not in [g["ids"] for g in await fetch_all_groups(client, t.proctor)]
    assert (await client.delete(f"/api/questions/{first['id']}", headers=bearer(t.admin))).status == 200
    assert (await client.post("/api/questions", json=body(text=same), headers=bearer(t.admin))).status == 201


async def fetch_all_groups(client: Client, token: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        r = await client.get(f"/api/questions/duplicates?limit=500&offset={len(out)}", headers=bearer(token))
        assert r.status == 200, await r.text()
        page = await r.json()
        out += page["groups"]
        if not page["groups"] or len(out) >= page["total"]:
            return out


async def test_duplicate_ref_is_409(client: Client) -> None:
    admin = await token_for(client, "admin")
    ref = f"ref-{secrets.token_hex(4)}"
    first = await create(client, admin, ref=ref)
    r = await client.post("/api/questions", json=body(ref=ref, allow_duplicate=True), headers=bearer(admin))
    err = await error(r, 409, "duplicate_question")
    assert err["existing_id"] == first["id"] and "ref" in err["message"]


# ---- edits ---------------------------------------------------------------------------------------------


async def test_unused_question_is_edited_in_place_and_content_edits_reset_the_review(client: Client) -> None:
    t = await tokens(client)
    q = await create(client, t.admin)
    r = await client.post(f"/api/questions/{q['id']}/review", json={"status": "verified"}, headers=bearer(t.proctor))
    assert r.status == 200 and (await r.json())["verification_status"] == "verified"

    metadata_only = body(text=q["text"], topic="cell-biology", difficulty="hard", marks=3)
    r = await client.put(f"/api/questions/{q['id']}", json=metadata_only, headers=bearer(t.admin))
    assert r.status == 200, await r.text()
    edited = await r.json()
    assert edited["id"] == q["id"] and edited["topic"] == "cell-biology" and edited["marks"] == 3
    assert edited["verification_status"] == "verified"  # metadata edits keep the review

    new_text = body(text=f"Edited text {secrets.token_hex(4)}?", correct="b")
    r = await client.put(f"/api/questions/{q['id']}", json=new_text, headers=bearer(t.admin))
    edited = await r.json()
    assert r.status == 200 and edited["id"] == q["id"] and edited["correct"] == "b"
    assert edited["verification_status"] == "unverified" and edited["reviewer_id"] is None
    assert edited["retired_at"] is None and edited["replaces"] is None

    await error(await client.put(f"/api/questions/{q['id']}", json=new_text, headers=bearer(t.proctor)), 403,
                "forbidden")  # fmt: skip
    await error(await client.put("/api/questions/999999999999", json=new_text, headers=bearer(t.admin)), 404,
                "question_not_found")  # fmt: skip
    bad = body(correct="z")
    await error(await client.put(f"/api/questions/{q['id']}", json=bad, headers=bearer(t.admin)), 422, "invalid_body")
    with_ref = {**new_text, "ref": "x"}  # the ref is not editable
    await error(await client.put(f"/api/questions/{q['id']}", json=with_ref, headers=bearer(t.admin)), 422,
                "invalid_body")  # fmt: skip


async def test_edit_to_another_questions_text_is_409(client: Client) -> None:
    admin = await token_for(client, "admin")
    a, b = await create(client, admin), await create(client, admin)
    r = await client.put(f"/api/questions/{b['id']}", json=body(text=a["text"]), headers=bearer(admin))
    assert (await error(r, 409, "duplicate_question"))["existing_id"] == a["id"]
    r = await client.put(f"/api/questions/{b['id']}", json=body(text=a["text"], allow_duplicate=True),
                         headers=bearer(admin))  # fmt: skip
    assert r.status == 200 and (await r.json())["text"] == a["text"]


async def sit_and_submit(client: Client, template_id: int) -> str:
    """A student answers every question of a fresh paper (option 'a') and submits; the attempt is flushed."""
    started = await start(client, template_id)
    st = Student(client, started["token"], started["session_id"])
    await st.connect()
    for q in st.questions():
        assert (await st.answer(q["id"], "a"))["type"] == "ack"
    st.seq += 1
    await st.send({"type": "submit", "seq": st.seq})
    assert (await st.recv())["type"] == "ack"
    assert (await st.recv())["type"] == "finished"
    assert await st.closed() == Close.SESSION_FINISHED
    assert await services(client).flusher.flush_once() == 1
    return st.sid


async def small_template(client: Client, admin: str, bank_id: int, count: int) -> int:
    config = {"count": count, "duration_s": 600}
    r = await client.post("/api/templates", headers=bearer(admin),
                          json={"slug": f"tpl-{secrets.token_hex(5)}", "name": "Small", "bank_id": bank_id,
                                "config": config})  # fmt: skip
    assert r.status == 201, await r.text()
    tid: int = (await r.json())["id"]
    return tid


async def test_edit_of_an_answered_question_creates_a_new_version_and_keeps_history(client: Client) -> None:
    t = await tokens(client)
    pool = services(client).pool
    ref = f"hist-{secrets.token_hex(4)}"
    q1 = await create(client, t.admin, ref=ref)
    q2 = await create(client, t.admin)
    bank = await new_bank(client, t.admin)
    await add_to_bank(client, t.admin, bank["id"], [q1["id"], q2["id"]])
    sid = await sit_and_submit(client, await small_template(client, t.admin, bank["id"], 2))

    edit = body(text=f"Reworded {secrets.token_hex(4)}: which base pairs with adenine?", correct="b")
    r = await client.put(f"/api/questions/{q1['id']}", json=edit, headers=bearer(t.admin))
    assert r.status == 200, await r.text()
    new = await r.json()
    assert new["id"] != q1["id"] and new["replaces"] == q1["id"] and new["ref"] == ref
    assert new["text"] == edit["text"] and new["correct"] == "b" and new["retired_at"] is None

    old = await (await client.get(f"/api/questions/{q1['id']}", headers=bearer(t.admin))).json()
    assert old["text"] == q1["text"] and old["correct"] == "a"  # untouched
    assert old["retired_at"] is not None and old["replaced_by"] == new["id"] and old["ref"] is None

    # the stored attempt still points at the question as it was answered, and its result reads the same
    resp = await pool.fetchrow("SELECT choice, is_correct FROM responses WHERE session_id = $1 AND question_id = $2",
                               sid, q1["id"])  # fmt: skip
    assert resp["choice"] == "a" and resp["is_correct"] is True
    result = await (await client.get(f"/api/sessions/{sid}/result", headers=bearer(t.admin))).json()
    item = next(i for i in result["questions"] if i["id"] == q1["id"])
    assert item["text"] == q1["text"] and item["correct"] == "a"

    # the bank now holds the new version, not the old one
    r = await client.get(f"/api/banks/{bank['id']}/questions", headers=bearer(t.proctor))
    assert {q["id"] for q in (await r.json())["questions"]} == {new["id"], q2["id"]}
    # the old version is retired: editing it again is refused, pointing at the new one
    r = await client.put(f"/api/questions/{q1['id']}", json=body(), headers=bearer(t.admin))
    assert str(new["id"]) in (await error(r, 409, "question_retired"))["message"]
    # re-importing the original ref finds the current version: nothing new
    r = await client.post(f"/api/banks/{bank['id']}/import?format=json", headers=bearer(t.admin),
                          json=[{**body(ref=ref), "text": q1["text"]}])  # fmt: skip
    report = await r.json()
    assert report["imported"] == 0 and report["rows"][0]["id"] == new["id"]


async def test_a_question_in_a_live_paper_is_versioned_too(client: Client) -> None:
    admin = await token_for(client, "admin")
    qs = [await create(client, admin) for _ in range(2)]
    bank = await new_bank(client, admin)
    await add_to_bank(client, admin, bank["id"], [q["id"] for q in qs])
    await start(client, await small_template(client, admin, bank["id"], 2))  # drawn, not yet answered
    r = await client.put(f"/api/questions/{qs[0]['id']}", json=body(text=qs[0]["text"], marks=1),
                         headers=bearer(admin))  # fmt: skip
    new = await r.json()
    assert r.status == 200 and new["id"] != qs[0]["id"] and new["replaces"] == qs[0]["id"] and new["marks"] == 1


async def test_an_edit_that_changes_nothing_changes_nothing(client: Client) -> None:
    admin = await token_for(client, "admin")
    q = await create(client, admin)
    same = {k: q[k] for k in ("topic", "difficulty", "text", "options", "correct", "explanation", "marks",
                              "category", "curriculum", "grade", "subject")}  # fmt: skip
    r = await client.put(f"/api/questions/{q['id']}", json=same, headers=bearer(admin))
    assert r.status == 200 and (await r.json())["updated_at"] == q["updated_at"]


# ---- retire, review --------------------------------------------------------------------------------------


async def test_retire_excludes_from_random_draws_and_bank_papers(client: Client) -> None:
    t = await tokens(client)
    s = services(client)
    topic = unique_topic()
    qs = [await create(client, t.admin, topic=topic) for _ in range(3)]
    bank = await new_bank(client, t.admin)
    await add_to_bank(client, t.admin, bank["id"], [q["id"] for q in qs])
    tid = await small_template(client, t.admin, bank["id"], 2)
    assert len(await s.catalog.bank(bank["id"])) == 3  # cached before the retire

    r = await client.delete(f"/api/questions/{qs[0]['id']}", headers=bearer(t.admin))
    assert r.status == 200 and (await r.json())["retired_at"] is not None
    again = await client.delete(f"/api/questions/{qs[0]['id']}", headers=bearer(t.admin))
    assert again.status == 200 and (await again.json())["retired_at"] == (await r.json())["retired_at"]

    r = await client.get(f"/api/questions/random?topic={topic}&count=100", headers=bearer(t.student))
    assert sorted(q["id"] for q in (await r.json())["questions"]) == [qs[1]["id"], qs[2]["id"]]
    assert {q.id for q in await s.catalog.bank(bank["id"])} == {qs[1]["id"], qs[2]["id"]}
    assert (await (await client.get(f"/api/banks/{bank['id']}", headers=bearer(t.student))).json())["questions"] == 2
    for _ in range(3):
        started = await start(client, tid)
        paper = await s.pool.fetchval("SELECT paper FROM test_sessions WHERE id = $1", started["session_id"])
        assert sorted(paper["q"]) == [qs[1]["id"], qs[2]["id"]]

    await error(await client.delete(f"/api/questions/{qs[1]['id']}", headers=bearer(t.proctor)), 403, "forbidden")
    await error(await client.delete("/api/questions/999999999999", headers=bearer(t.admin)), 404,
                "question_not_found")  # fmt: skip


async def test_review(client: Client) -> None:
    t = await tokens(client)
    topic = unique_topic()
    q = await create(client, t.admin, topic=topic)
    me = await (await client.get("/api/users/me", headers=bearer(t.proctor))).json()
    url = f"/api/questions/{q['id']}/review"
    r = await client.post(url, json={"status": "rejected", "note": "two right answers"}, headers=bearer(t.proctor))
    reviewed = await r.json()
    assert r.status == 200 and reviewed["verification_status"] == "rejected"
    assert reviewed["reviewer_id"] == me["id"] and reviewed["review_note"] == "two right answers"
    assert reviewed["reviewed_at"] is not None
    # rejected questions are not drawn
    r = await client.get(f"/api/questions/random?topic={topic}", headers=bearer(t.proctor))
    assert (await r.json())["questions"] == []

    await error(await client.post(url, json={"status": "verified"}, headers=bearer(t.student)), 403, "forbidden")
    await error(await client.post(url, json={"status": "approved"}, headers=bearer(t.admin)), 422, "invalid_body")
    await error(await client.post(url, json={"status": "verified", "note": "n" * 1001}, headers=bearer(t.admin)),
                422, "invalid_body")  # fmt: skip
    await error(await client.post("/api/questions/999999999999/review", json={"status": "verified"},
                                  headers=bearer(t.admin)), 404, "question_not_found")  # fmt: skip
    await client.delete(f"/api/questions/{q['id']}", headers=bearer(t.admin))
    await error(await client.post(url, json={"status": "verified"}, headers=bearer(t.admin)), 409, "question_retired")


# ---- search and random -----------------------------------------------------------------------------------


async def test_search_filters_and_pages(client: Client) -> None:
    t = await tokens(client)
    topic = unique_topic()
    easy = await create(client, t.admin, topic=topic, grade="11")
    hard = await create(client, t.admin, topic=topic, difficulty="hard", grade="12")
    retired = await create(client, t.admin, topic=topic)
    await client.delete(f"/api/questions/{retired['id']}", headers=bearer(t.admin))

    async def ids(query: str, token: str = t.proctor) -> list[int]:
        r = await client.get(f"/api/questions?topic={topic}&{query}", headers=bearer(token))
        assert r.status == 200, await r.text()
        page = await r.json()
        return [q["id"] for q in page["questions"]]

    assert await ids("") == [easy["id"], hard["id"]]
    assert await ids("include_retired=true") == [easy["id"], hard["id"], retired["id"]]
    assert await ids("difficulty=hard") == [hard["id"]]
    assert await ids("grade=11") == [easy["id"]]
    assert await ids("verification_status=verified") == []
    assert await ids(f"q={easy['text'][-20:-2].upper()}") == [easy["id"]]
    assert await ids("q=%25") == [] and await ids("q=_") == []  # LIKE wildcards are literal
    assert await ids("limit=1&offset=1") == [hard["id"]]
    r = await client.get(f"/api/questions?topic={topic}&limit=1", headers=bearer(t.admin))
    assert (await r.json())["total"] == 2
    await error(await client.get("/api/questions", headers=bearer(t.student)), 403, "forbidden")
    for bad in ("limit=0", "limit=501", "offset=-1", "difficulty=x", "include_retired=maybe", "bank_id=0"):
        await error(await client.get(f"/api/questions?{bad}", headers=bearer(t.admin)), 422, "invalid_query")


async def test_random_hides_answers_from_students(client: Client) -> None:
    t = await tokens(client)
    topic = unique_topic()
    made = [await create(client, t.admin, topic=topic, difficulty=d) for d in ("easy", "easy", "hard")]
    r = await client.get(f"/api/questions/random?topic={topic}&count=5", headers=bearer(t.student))
    out = await r.json()
    assert r.status == 200 and out["full"] is False
    assert sorted(q["id"] for q in out["questions"]) == sorted(q["id"] for q in made)
    for q in out["questions"]:
        assert "correct" not in q and "explanation" not in q and "ref" not in q and len(q["options"]) == 3
    r = await client.get(f"/api/questions/random?topic={topic}&difficulty=easy&count=1", headers=bearer(t.proctor))
    out = await r.json()
    assert out["full"] is True and len(out["questions"]) == 1
    assert out["questions"][0]["difficulty"] == "easy" and out["questions"][0]["correct"] == "a"
    await error(await client.get("/api/questions/random"), 401, "unauthorized")
    for bad in ("count=0", "count=101", "count=x", "difficulty=easyish", f"topic={'x' * 61}"):
        await error(await client.get(f"/api/questions/random?{bad}", headers=bearer(t.student)), 422, "invalid_query")


async def test_random_by_bank_and_curriculum(client: Client) -> None:
    t = await tokens(client)
    seeded = await services(client).pool.fetchval("SELECT id FROM question_banks WHERE slug = 'neet-biology'")
    r = await client.get(f"/api/questions/random?bank_id={seeded}&count=100&curriculum=NCERT&grade=11-12",
                         headers=bearer(t.student))  # fmt: skip
    out = await r.json()
    assert len(out["questions"]) == 100 and len({q["id"] for q in out["questions"]}) == 100
    assert all(q["curriculum"] == "NCERT" and q["grade"] == "11-12" for q in out["questions"])


async def test_openapi_describes_the_endpoints(client: Client) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    for path in ("/api/questions", "/api/questions/{id}", "/api/questions/{id}/review", "/api/questions/random",
                 "/api/questions/duplicates"):  # fmt: skip
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert "correct" not in schemas["PublicQuestionOut"]["properties"]
    assert "correct" in schemas["QuestionOut"]["properties"]
    assert set(spec["paths"]["/api/questions/{id}"]) == {"get", "put", "delete"}
