"""The usual alternative: every answer autosaved by an HTTP POST, written straight to PostgreSQL.

    python -m loadtest.baselines.http_pg --port P --database-url postgresql://postgres@127.0.0.1:5432/db

`POST /answer` with JSON `{"student": ID, "seq": n, "q": <int>, "choice": "A"}` upserts one row of
`baseline_answers` (created at start-up if missing; primary key (student, q)) in its own committed
transaction, and only then answers 200 `{"ack": n}`. This is how most exam platforms autosave (Moodle's quiz
autosave is a POST that ends in a committed database write). Bad input gets 400
`{"error": "bad_request", "message": ...}`; a failed write 503 `{"error": "unavailable", ...}`.
`GET /healthz` answers 200 once the server listens.

It is given its best shot: one statement per request (an autocommitted INSERT ... ON CONFLICT DO UPDATE is a
committed transaction with a single round trip, no BEGIN/COMMIT round trips), prepared statements (asyncpg
caches them), a connection pool, uvloop, no access log, Python's GC tuned as the hub tunes it. The commit is
durable (synchronous_commit stays on), as examhub's acks are (Redis appendfsync always).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from loadtest.baselines import run, serve_until_signal

STUDENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CHOICE = re.compile(r"^[A-Za-z0-9]{1,8}$")
POOL = web.AppKey("pool", asyncpg.Pool)

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_answers (
    student  text        NOT NULL,
    q        integer     NOT NULL,
    choice   text        NOT NULL,
    seq      bigint      NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (student, q)
)
"""

# A resent older answer (seq not newer than the saved one) changes nothing, as in examhub.
UPSERT = """
INSERT INTO baseline_answers (student, q, choice, seq) VALUES ($1, $2, $3, $4)
ON CONFLICT (student, q) DO UPDATE SET choice = excluded.choice, seq = excluded.seq, saved_at = now()
WHERE baseline_answers.seq < excluded.seq
"""


def parse_answer(body: Any) -> tuple[str, int, int, str] | str:
    """(student, seq, q, choice), or what is wrong with the request body."""
    if not isinstance(body, dict):
        return 'expected {"student": id, "seq": n, "q": question, "choice": option}'
    student, seq, q, choice = body.get("student"), body.get("seq"), body.get("q"), body.get("choice")
    if _is_int(student):
        student = str(student)
    if not isinstance(student, str) or not STUDENT_ID.match(student):
        return "student must be an integer or 1-64 letters, digits or _.:-"
    if not _is_int(seq) or not 0 <= seq < 2**63:
        return "seq must be a non-negative integer"
    if not _is_int(q) or not -(2**31) <= q < 2**31:
        return "q must be a 32-bit integer"
    if not isinstance(choice, str) or not CHOICE.match(choice):
        return "choice must be 1-8 letters or digits"
    return student, seq, q, choice


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


async def answer(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except ValueError:
        return _bad("the body is not JSON")
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "too_large", "message": "an answer is at most 4096 bytes"}, status=413)
    parsed = parse_answer(body)
    if isinstance(parsed, str):
        return _bad(parsed)
    student, seq, q, choice = parsed
    try:
        async with request.app[POOL].acquire() as conn:
            await conn.execute(UPSERT, student, q, choice, seq)
    except (asyncpg.PostgresError, OSError) as exc:
        return web.json_response({"error": "unavailable", "message": f"not saved: {exc}"}, status=503)
    return web.json_response({"ack": seq})


async def serve(port: int, database_url: str, pool_size: int, reuse_port: bool) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size)
    async with pool.acquire() as conn, conn.transaction():
        # --workers N start together: two concurrent CREATE TABLE IF NOT EXISTS can both try to create it
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('baseline_answers'))")
        await conn.execute(SCHEMA)
    app = web.Application(client_max_size=4096)  # an answer is under 200 bytes
    app[POOL] = pool
    app.router.add_post("/answer", answer)
    try:
        await serve_until_signal(app, port, f"http_pg: serving on http://127.0.0.1:{port}/answer", reuse_port)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--pool-size", type=int, default=20, help="PostgreSQL connections per process (default 20)")
    p.add_argument("--workers", type=int, default=1, choices=(1, 2, 3, 4), help="processes sharing the port")
    args = p.parse_args(argv)
    return run(serve, (args.port, args.database_url, args.pool_size), args.workers)


if __name__ == "__main__":
    sys.exit(main())
