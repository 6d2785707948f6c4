"""Question banks over REST, bulk import (JSON, CSV, Moodle XML) and `examhub import`."""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.commands import importer as command
from server.settings import Settings
from storage import importers
from tests.server.conftest import bearer, services
from tests.server.test_questions import Tokens, body, create, error, new_bank, tokens

Client = TestClient[Any, Any]


# ---- banks and membership ----------------------------------------------------------------------------------


async def test_bank_create_list_get_and_roles(client: Client) -> None:
    t = await tokens(client)
    slug = f"bank-{secrets.token_hex(5)}"
    payload = {"slug": slug, "name": " Zoology ", "subject": "biology", "curriculum": "CBSE", "grade": "12"}
    r = await client.post("/api/banks", json=payload, headers=bearer(t.admin))
    assert r.status == 201, await r.text()
    bank = await r.json()
    assert bank["slug"] == slug and bank["name"] == "Zoology" and bank["questions"] == 0 and bank["grade"] == "12"
    await error(await client.post("/api/banks", json=payload, headers=bearer(t.admin)), 409, "conflict")
    for who in (t.proctor, t.student):
        await error(await client.post("/api/banks", json=payload, headers=bearer(who)), 403, "forbidden")
    await error(await client.post("/api/banks", json=payload), 401, "unauthorized")
    for bad in ({**payload, "slug": "Bad Slug"}, {**payload, "name": ""}, {**payload, "name": "   "},
                {**payload, "grade": "g" * 61}, {**payload, "extra": 1}, {"slug": "x-y"}):  # fmt: skip
        await error(await client.post("/api/banks", json=bad, headers=bearer(t.admin)), 422, "invalid_body")

    r = await client.get(f"/api/banks/{bank['id']}", headers=bearer(t.student))
    assert r.status == 200 and (await r.json()) == bank
    r = await client.get("/api/banks?limit=500", headers=bearer(t.student))
    listed = await r.json()
    assert bank in listed["banks"] and listed["total"] >= 2
    seeded = next(b for b in listed["banks"] if b["slug"] == "neet-biology")
    assert seeded["questions"] == 240
    await error(await client.get("/api/banks"), 401, "unauthorized")
    await error(await client.get("/api/banks/999999999999", headers=bearer(t.student)), 404, "bank_not_found")
    await error(await client.get("/api/banks?limit=0", headers=bearer(t.student)), 422, "invalid_query")


async def test_membership_add_remove_list(client: Client) -> None:
    t = await tokens(client)
    s = services(client)
    bank = await new_bank(client, t.admin)
    bid = bank["id"]
    qs = [(await create(client, t.admin))["id"] for _ in range(3)]
    assert await s.catalog.bank(bid) == ()  # cached empty: the add must invalidate it

    url = f"/api/banks/{bid}/questions"
    r = await client.post(url, json={"question_ids": [qs[0], qs[1], qs[0]]}, headers=bearer(t.admin))
    assert r.status == 200 and await r.json() == {"bank_id": bid, "added": 2, "removed": 0, "questions": 2}
    assert {q.id for q in await s.catalog.bank(bid)} == {qs[0], qs[1]}
    r = await client.post(url, json={"question_ids": [qs[1], qs[2]]}, headers=bearer(t.admin))
    assert (await r.json())["added"] == 1

    # all or nothing: an unknown or retired id adds nothing
    await client.delete(f"/api/questions/{qs[2]}", headers=bearer(t.admin))
    fresh = (await create(client, t.admin))["id"]
    for ids in ([fresh, 999_999_999_999], [fresh, qs[2]]):
        err = await error(await client.post(url, json={"question_ids": ids}, headers=bearer(t.admin)), 422,
                          "invalid_body")  # fmt: skip
        assert str(ids[1]) in err["message"]
    r = await client.get(url, headers=bearer(t.proctor))
    page = await r.json()
    assert r.status == 200 and [q["id"] for q in page["questions"]] == [qs[0], qs[1]] and page["total"] == 2
    assert page["questions"][0]["correct"] == "a"
    r = await client.get(f"{url}?include_retired=true", headers=bearer(t.proctor))
    assert [q["id"] for q in (await r.json())["questions"]] == qs

    r = await client.post(f"{url}/remove", json={"question_ids": [qs[0], fresh]}, headers=bearer(t.admin))
    assert await r.json() == {"bank_id": bid, "added": 0, "removed": 1, "questions": 1}
    assert {q.id for q in await s.catalog.bank(bid)} == {qs[1]}
    assert (await (await client.get(f"/api/questions/{qs[0]}", headers=bearer(t.admin))).json())["retired_at"] is None

    for method, path in (("post", url), ("post", f"{url}/remove")):
        req = getattr(client, method)
        await error(await req(path, json={"question_ids": [qs[1]]}, headers=bearer(t.proctor)), 403, "forbidden")
        await error(await req(path.replace(str(bid), "999999999999"), json={"question_ids": [qs[1]]},
                              headers=bearer(t.admin)), 404, "bank_not_found")  # fmt: skip
        for bad in ({"question_ids": []}, {"question_ids": [0]}, {"question_ids": [2**63]}, {"ids": [1]},
                    {"question_ids": list(range(1, 1002))}):  # fmt: skip
            await error(await req(path, json=bad, headers=bearer(t.admin)), 422, "invalid_body")
    await error(await client.get(url, headers=bearer(t.student)), 403, "forbidden")
    await error(await client.get("/api/banks/999999999999/questions", headers=bearer(t.admin)), 404, "bank_not_found")


# ---- import over REST ------------------------------------------------------------------------------------


def tag() -> str:
    return secrets.token_hex(5)


def csv_file(tag: str) -> str:
    return (
        "ref,topic,difficulty,text,option_a,option_b,option_c,option_d,correct,explanation,marks,category\n"
        f'csv-{tag}-1,genetics,easy,"Which base pairs with adenine ({tag})?",Thymine,Guanine,Cytosine,Uracil,a,A-T,4,\n'
        f"csv-{tag}-2,genetics,medium,Who proposed the laws of inheritance ({tag})?,Mendel,Darwin,,,a,,2,\n"
        f"csv-{tag}-3,genetics,hard,Answer key out of range ({tag})?,One,Two,,,e,,,\n"
        f"csv-{tag}-4,genetics,hard,Marks that are not a number ({tag})?,One,Two,,,a,,four,\n"
        f"csv-{tag}-5,Not A Topic,hard,Bad topic ({tag})?,One,Two,,,a,,,\n"
    )


def json_file(tag: str) -> list[Any]:
    return [
        body(ref=f"json-{tag}-1", text=f"First JSON question ({tag})?"),
        body(ref=f"json-{tag}-2", text=f"Second JSON question ({tag})?", subject="zoology"),
        body(ref=f"json-{tag}-3", correct="z"),
        "not an object",
        body(text=f"first json question ({tag})"),  # the same normalized text as row 1: a duplicate
    ]


def moodle_file(tag: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<quiz>
  <question type="category"><category><text>$course$/top/Human Physiology</text></category></question>
  <question type="multichoice">
    <name><text>Heart</text></name>
    <questiontext format="html">
      <text><![CDATA[<p>How many chambers has the human heart ({tag})?</p>]]></text>
    </questiontext>
    <generalfeedback format="html"><text>Two atria and two ventricles.</text></generalfeedback>
    <single>true</single>
    <answer fraction="100"><text>Four</text></answer>
    <answer fraction="0"><text>Three</text></answer>
    <idnumber>moodle-{tag}-1</idnumber>
  </question>
  <question type="essay">
    <name><text>Essay</text></name>
    <questiontext format="html"><text>Describe the heart ({tag}).</text></questiontext>
  </question>
  <question type="multichoice">
    <name><text>Lungs</text></name>
    <questiontext format="plain_text"><text>Where does gas exchange happen ({tag})?</text></questiontext>
    <single>true</single>
    <answer fraction="0"><text>Trachea</text></answer>
    <answer fraction="100"><text>Alveoli</text></answer>
    <tags><tag><text>hard</text></tag><tag><text>respiration</text></tag></tags>
  </question>
</quiz>
"""


async def do_import(client: Client, admin: str, bank_id: int, data: Any, ctype: str, query: str = "") -> Any:
    return await client.post(f"/api/banks/{bank_id}/import{query}", data=data,
                             headers={**bearer(admin), "Content-Type": ctype})  # fmt: skip


def statuses(report: dict[str, Any]) -> list[str]:
    return [r["status"] for r in report["rows"]]


async def test_import_json_good_and_bad_rows_then_idempotent(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin, subject="biology", curriculum="CBSE", grade="12")
    k = tag()
    raw = json.dumps(json_file(k))
    r = await do_import(client, t.admin, bank["id"], raw, "application/json")
    assert r.status == 200, await r.text()
    report = await r.json()
    assert (report["imported"], report["duplicates"], report["failed"]) == (2, 1, 2)
    assert statuses(report) == ["imported", "imported", "failed", "failed", "duplicate"]
    assert [row["row"] for row in report["rows"]] == [1, 2, 3, 4, 5]
    assert "not one of the option ids" in report["rows"][2]["error"] and report["rows"][2]["ok"] is False
    assert report["rows"][4]["id"] == report["rows"][0]["id"] and report["rows"][4]["ok"] is True
    first = await (await client.get(f"/api/questions/{report['rows'][0]['id']}", headers=bearer(t.admin))).json()
    second = await (await client.get(f"/api/questions/{report['rows'][1]['id']}", headers=bearer(t.admin))).json()
    assert (first["subject"], first["curriculum"], first["grade"]) == ("biology", "CBSE", "12")  # the bank's
    assert second["subject"] == "zoology" and first["verification_status"] == "unverified"
    assert (await (await client.get(f"/api/banks/{bank['id']}", headers=bearer(t.admin))).json())["questions"] == 2

    again = await (await do_import(client, t.admin, bank["id"], raw, "application/json")).json()
    assert (again["imported"], again["duplicates"], again["failed"]) == (0, 3, 2)
    assert [row["id"] for row in again["rows"]][:2] == [row["id"] for row in report["rows"]][:2]

    # {"questions": [...]} works too, and a duplicate found in another bank is linked to this one
    other = await new_bank(client, t.admin)
    wrapped = json.dumps({"questions": json_file(k)[:1]})
    r = await do_import(client, t.admin, other["id"], wrapped, "application/json")
    assert statuses(await r.json()) == ["duplicate"]
    assert (await (await client.get(f"/api/banks/{other['id']}", headers=bearer(t.admin))).json())["questions"] == 1


async def test_import_csv_then_idempotent(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    k = tag()
    r = await do_import(client, t.admin, bank["id"], csv_file(k), "text/csv")
    report = await r.json()
    assert r.status == 200 and (report["imported"], report["duplicates"], report["failed"]) == (2, 0, 3)
    assert statuses(report) == ["imported", "imported", "failed", "failed", "failed"]
    assert report["rows"][3]["error"].startswith("marks")
    assert report["rows"][4]["error"].startswith("topic")
    q2 = await (await client.get(f"/api/questions/{report['rows'][1]['id']}", headers=bearer(t.admin))).json()
    assert q2["ref"] == f"csv-{k}-2" and q2["marks"] == 2 and [o["id"] for o in q2["options"]] == ["a", "b"]
    again = await (await do_import(client, t.admin, bank["id"], csv_file(k), "text/csv")).json()
    assert (again["imported"], again["duplicates"]) == (0, 2)
    # with ?format= a generic content type is fine
    r = await do_import(client, t.admin, bank["id"], csv_file(k), "text/plain", "?format=csv")
    assert (await r.json())["imported"] == 0


async def test_import_moodle(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    k = tag()
    r = await do_import(client, t.admin, bank["id"], moodle_file(k), "application/xml")
    report = await r.json()
    assert r.status == 200, report
    assert statuses(report) == ["imported", "failed", "imported"]
    assert report["rows"][1]["error"] == "type 'essay' is not supported, only multichoice (Essay)"
    heart = await (await client.get(f"/api/questions/{report['rows'][0]['id']}", headers=bearer(t.admin))).json()
    assert heart["text"] == f"How many chambers has the human heart ({k})?" and heart["topic"] == "human-physiology"
    assert heart["ref"] == f"moodle-{k}-1" and heart["explanation"] == "Two atria and two ventricles."
    lungs = await (await client.get(f"/api/questions/{report['rows'][2]['id']}", headers=bearer(t.admin))).json()
    assert (lungs["topic"], lungs["difficulty"], lungs["correct"]) == ("respiration", "hard", "b")
    again = await (await do_import(client, t.admin, bank["id"], moodle_file(k), "text/xml")).json()
    assert (again["imported"], again["duplicates"], again["failed"]) == (0, 2, 1)


XXE = """<?xml version="1.0"?>
<!DOCTYPE quiz [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<quiz><question type="multichoice"><questiontext><text>&xxe;</text></questiontext></question></quiz>"""
LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE quiz [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<quiz><question type="multichoice"><questiontext><text>&d;</text></questiontext></question></quiz>"""


async def test_import_refuses_bad_files_cleanly(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    bid = bank["id"]
    for data, ctype, query, fragment in [
        (XXE, "application/xml", "", "refused"),
        (LAUGHS, "text/xml", "", "refused"),
        ("<quiz><question>", "text/xml", "", "not valid XML"),
        ("[1, 2", "application/json", "", "not valid JSON"),
        ('{"rows": []}', "application/json", "", "expected a list"),
        ("[]", "application/json", "", "no questions"),
        ("", "text/csv", "", "empty"),
        (b"topic,difficulty,text,option_a,option_b,correct\n\xff\xfe\n", "text/csv", "", "not UTF-8"),
        ("colour,shape\nred,round\n", "text/csv", "", "unknown column"),
    ]:
        err = await error(await do_import(client, t.admin, bid, data, ctype, query), 422, "invalid_file")
        assert fragment in err["message"], (fragment, err)
    assert (await (await client.get(f"/api/banks/{bid}", headers=bearer(t.admin))).json())["questions"] == 0

    await error(await do_import(client, t.admin, bid, "[]", "text/plain"), 422, "invalid_query")
    await error(await do_import(client, t.admin, bid, "[]", "application/json", "?format=yaml"), 422, "invalid_query")
    await error(await do_import(client, t.admin, bid, "a=b", "application/x-www-form-urlencoded"), 415,
                "unsupported_media_type")  # fmt: skip
    await error(await do_import(client, t.admin, bid, "[]", "application/json", "?format=csv"), 415,
                "unsupported_media_type")  # fmt: skip
    big = b"[" + b" " * importers.MAX_IMPORT_BYTES + b"]"
    await error(await do_import(client, t.admin, bid, io.BytesIO(big), "application/json"), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    await error(await do_import(client, t.admin, bid, chunks(), "application/json"), 413, "payload_too_large")
    await error(await do_import(client, t.proctor, bid, "[]", "application/json"), 403, "forbidden")
    await error(await client.post(f"/api/banks/{bid}/import", data="[]"), 401, "unauthorized")
    await error(await do_import(client, t.admin, 999_999_999_999, "[]", "application/json"), 404, "bank_not_found")


async def test_import_dry_run_keeps_nothing(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    k = tag()
    r = await do_import(client, t.admin, bank["id"], csv_file(k), "text/csv", "?dry_run=true")
    report = await r.json()
    assert report["dry_run"] is True and report["imported"] == 2 and report["rows"][0]["id"] is None
    assert (await (await client.get(f"/api/banks/{bank['id']}", headers=bearer(t.admin))).json())["questions"] == 0
    stored = await services(client).pool.fetchval("SELECT count(*) FROM questions WHERE ref LIKE $1", f"csv-{k}-%")
    assert stored == 0


async def test_import_nul_and_ref_repeats_are_row_errors(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    k = tag()
    rows = "topic,difficulty,text,option_a,option_b,correct,ref\n"
    rows += f"genetics,easy,Nul\x00inside ({k})?,x,y,a,\n"
    rows += f"genetics,easy,Repeated ref one ({k})?,x,y,a,rep-{k}\n"
    rows += f"genetics,easy,Repeated ref two ({k})?,x,y,a,rep-{k}\n"
    report = await (await do_import(client, t.admin, bank["id"], rows, "text/csv")).json()
    assert statuses(report) == ["failed", "imported", "failed"]
    assert "NUL" in report["rows"][0]["error"] and "also on row 2" in report["rows"][2]["error"]


async def test_imported_questions_are_drawn_into_papers(client: Client) -> None:
    t = await tokens(client)
    bank = await new_bank(client, t.admin)
    await do_import(client, t.admin, bank["id"], csv_file(tag()), "text/csv")
    s = services(client)
    assert len(await s.catalog.bank(bank["id"])) == 2


# ---- examhub import ----------------------------------------------------------------------------------------


def args(file: Path, bank: str, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(file=file, bank=bank, format=kw.get("format"), dry_run=kw.get("dry_run", False))


async def bank_slug(client: Client, t: Tokens) -> str:
    slug: str = (await new_bank(client, t.admin))["slug"]
    return slug


async def test_cli_import_reports_and_is_idempotent(
    client: Client, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    t = await tokens(client)
    slug = await bank_slug(client, t)
    k = tag()
    monkeypatch.setattr(command, "PROGRESS_EVERY", 2)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([body(ref=f"cli-{k}-{i}", text=f"CLI question {i} ({k})?") for i in range(5)]))
    err = io.StringIO()
    assert await command.import_file(settings, args(good, slug), err) == 0
    assert "imported 5, duplicates 0, failed 0 (of 5 rows)" in capsys.readouterr().out
    assert "2/5 rows (40%" in err.getvalue() and "5/5 rows (100%" in err.getvalue()
    assert await command.import_file(settings, args(good, slug), io.StringIO()) == 0
    assert "imported 0, duplicates 5, failed 0" in capsys.readouterr().out
    bank_id = await services(client).pool.fetchval("SELECT id FROM question_banks WHERE slug = $1", slug)
    assert (await (await client.get(f"/api/banks/{bank_id}", headers=bearer(t.admin))).json())["questions"] == 5

    mixed = tmp_path / "mixed.data"
    mixed.write_text(csv_file(k))
    assert await command.import_file(settings, args(mixed, slug), err := io.StringIO()) == 2
    assert "give --format" in err.getvalue()
    assert await command.import_file(settings, args(mixed, slug, format="csv"), io.StringIO()) == 1
    out = capsys.readouterr().out
    assert "row 3: correct: 'e' is not one of the option ids a, b" in out and "failed 3" in out

    assert await command.import_file(settings, args(good, "no-such-bank"), err := io.StringIO()) == 2
    assert "no bank with slug" in err.getvalue()
    assert await command.import_file(settings, args(tmp_path / "missing.csv", slug), err := io.StringIO()) == 2
    assert "cannot read" in err.getvalue()
    bad = tmp_path / "bad.xml"
    bad.write_text(XXE)
    assert await command.import_file(settings, args(bad, slug), err := io.StringIO()) == 2
    assert "refused" in err.getvalue()


def test_cli_import_as_a_command(settings: Settings, tmp_path: Path) -> None:
    """`examhub import` as a user runs it: a subprocess, settings from the environment."""
    import asyncio

    from storage import pg
    from storage import questions as repo

    slug = f"cli-{tag()}"

    async def make_bank() -> None:
        assert settings.database_url is not None
        pool = await pg.create_pool(settings.database_url, 1, 1)
        try:
            await repo.create_bank(pool, slug, "CLI bank", "biology", "", "")
        finally:
            await pool.close()

    asyncio.run(make_bank())
    k = tag()
    xml = tmp_path / "export.xml"
    xml.write_text(moodle_file(k))
    env = {**os.environ, "DATABASE_URL": str(settings.database_url), "REDIS_URL": str(settings.redis_url),
           "EXAMHUB_SECRET": "x" * 40, "EXAMHUB_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "server.cli", "import", str(xml), "--bank", slug],
                         env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # the essay row failed
    assert "imported 2, duplicates 0, failed 1 (of 3 rows)" in run.stdout
    assert "row 2: type 'essay' is not supported" in run.stdout
    assert "3 rows read from export.xml (moodle)" in run.stderr
