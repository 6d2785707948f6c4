"""The `examhub` command: serve, demo, migrate, seed, sit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server import workers
from server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from server.succession import Place
    from storage.session_store import RedisSessionStore

log = logging.getLogger("examhub")


def _secret(settings: Settings) -> str:
    """EXAMHUB_SECRET, or a random one kept in the data folder (so restarts keep tokens valid)."""
    if settings.secret:
        return settings.secret
    path = settings.data_dir / "secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


@contextlib.contextmanager
def resolved(settings: Settings) -> Iterator[Settings]:
    """Fill in what the environment left out: embedded PostgreSQL/Redis and a secret."""
    from storage.embedded import Embedded

    need_pg, need_redis = settings.database_url is None, settings.redis_url is None
    if not (need_pg or need_redis):
        yield settings.with_(secret=_secret(settings))
        return
    which = " and ".join(n for n, need in (("PostgreSQL", need_pg), ("Redis", need_redis)) if need)
    print(f"examhub: no {'DATABASE_URL' if need_pg else 'REDIS_URL'}{' / REDIS_URL' if need_pg and need_redis else ''}"
          f" set: starting an embedded {which} in {settings.data_dir}/", flush=True)  # fmt: skip
    with Embedded(settings.data_dir, postgres=need_pg, redis=need_redis) as (database_url, redis_url):
        yield settings.with_(
            database_url=settings.database_url or database_url,
            redis_url=settings.redis_url or redis_url,
            secret=_secret(settings),
        )


def _tune_gc() -> None:
    # The cyclic collector is the tail at scale (measured: p99 ~320 ms -> ~10 ms for a hub holding 10k
    # connections): collect young objects rarely, and move what start-up created out of its reach.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


LEASE_RELEASE_S = 2.0  # how long the parent of `serve --workers` tries to end a dead hub process' lease
LISTEN_BACKLOG = 4096  # capped by net.core.somaxconn (4096 on current Linux)


async def _serve(settings: Settings, banner: bool, reuse_port: bool = False) -> None:
    from aiohttp import web

    from server.app import create_app
    from server.services import SERVICES

    app = create_app(settings)
    # No access log by default: one log line per request costs more than the request (EXAMHUB_ACCESS_LOG=1).
    runner = web.AppRunner(app, handle_signals=False, access_log=log if settings.access_log else None)
    await runner.setup()
    place = await _succeed(settings, app[SERVICES].store)
    # A start storm is thousands of handshakes at once: the default listen backlog (128) overflows and the
    # kernel drops SYNs, which clients see as second-long connect timeouts (docs/performance.md, start storm).
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True, reuse_port=reuse_port or None,
                       backlog=LISTEN_BACKLOG)  # fmt: skip
    await site.start()
    # `serve --workers N`: the parent now replaces this process should it die, and then releases its lease
    workers.ready(app[SERVICES].store.host)
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workers.on_orphaned(stop.set)
    print(f"examhub: serving on http://{settings.host}:{settings.port}", flush=True)
    if banner:
        templates = await _template_lines(app[SERVICES])
        secret_file = settings.data_dir / "admin-password"
        admin = secret_file.read_text().strip() if secret_file.exists() else "(see examhub user add)"
        print(_BANNER.format(url=settings.base_url, templates=templates, admin=admin), flush=True)
    await stop.wait()
    print("examhub: shutting down", flush=True)
    await runner.cleanup()
    if place is not None:
        place.close()  # only now: its students have been marked offline


async def _succeed(settings: Settings, store: RedisSessionStore) -> Place | None:
    """Take this process' place on its port and end the lease of the process that had it before, which has ended
    (server/succession.py): its students, coming back here, count as dropped, not as second devices. Before this
    process listens, so that none of them comes back first. An ephemeral port (0) has no successor."""
    from redis.exceptions import RedisError

    from server import succession
    from storage.errors import StorageUnavailable

    if settings.port == 0:
        return None
    try:
        place = succession.take(settings.data_dir, settings.port, workers.slot())
    except OSError as exc:
        log.warning("no place in %s (%s): a successor of this process cannot end its lease", settings.data_dir, exc)
        return None
    if place is None:  # another live process holds it (one still shutting down marks its students offline itself)
        return None
    if place.previous is not None and place.previous != store.host:
        try:
            await store.succeed(place.previous)
        except (StorageUnavailable, RedisError, OSError) as exc:  # serving matters more: the lease runs out anyway
            log.warning("could not end the lease of %s, the ended process before this one: %s", place.previous, exc)
        else:
            log.info("ended the lease of %s, the process that served this port before this one", place.previous)
    try:
        place.record(store.host)
    except OSError as exc:
        log.warning("cannot write %s (%s): a successor of this process cannot end its lease", place.path, exc)
        place.close()
        return None
    return place


async def _template_lines(services: object) -> str:
    from storage import pg

    rows = await pg.list_templates(services.pool)  # type: ignore[attr-defined]
    return "\n".join(f"    {r['id']:>3}  {r['slug']:<20} {r['name']}" for r in rows)


_BANNER = """
Take a test
-----------
In a browser: {url}/   (proctors: {url}/proctor, sign in as admin / {admin} or a proctor)

Templates:
{templates}

Or sit one in this terminal (another shell; add --auto to let a bot answer):
    .venv/bin/examhub sit --url {url} --template biology-quick-10

Or by hand with curl and any WebSocket client:
    TOKEN=$(curl -s -XPOST {url}/api/auth/guest -H 'Content-Type: application/json' \\
             -d '{{"display_name":"Asha"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    curl -s -XPOST {url}/api/sessions -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
         -d '{{"template_id": 1}}'
    # connect to the returned ws_url and send {{"type":"answer","seq":1,"q":<id>,"choice":"a"}} (docs/protocol.md)

Administer (templates, users, questions, analytics): log in as admin / {admin}
    curl -s -XPOST {url}/api/auth/login -H 'Content-Type: application/json' \
         -d '{{"username":"admin","password":"{admin}"}}'
The whole REST API is described at {url}/api/openapi.json

Stop with Ctrl-C.
"""


async def _migrate(settings: Settings) -> None:
    from storage import pg
    from storage.migrate import migrate

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 2)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        print("examhub: migrations applied: " + (", ".join(applied) if applied else "none (up to date)"))
    finally:
        await pool.close()


async def _seed(settings: Settings, admin: bool = False) -> None:
    from storage import pg
    from storage import users as repo
    from storage.migrate import migrate
    from storage.seed import seed_demo

    assert settings.database_url is not None
    pool = await pg.create_pool(settings.database_url, 1, 2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        report = await seed_demo(pool)
        print(
            f"examhub: demo bank {report.bank_id}: {report.questions} questions ({report.new_questions} new); "
            f"templates: {', '.join(f'{k} (id {v})' for k, v in report.templates.items())}"
        )
        if admin:  # the demo's administrator; its password is kept in the data folder
            path = settings.data_dir / "admin-password"
            if not path.exists():
                password = secrets.token_urlsafe(12)
                try:
                    await repo.create_user(pool, "admin", password, "Demo admin", role="admin", tier="enrolled")
                    path.write_text(password)
                    path.chmod(0o600)
                except repo.UserExists:
                    print("examhub: a user 'admin' exists already; its password is not in the data folder")
    finally:
        await pool.close()


def _worker(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    _run(_serve(settings, banner=False, reuse_port=True))


def _serve_workers(settings: Settings, n: int) -> int:
    """N independent hub processes on one port: the kernel spreads connections over them (SO_REUSEPORT).
    They share only Redis and PostgreSQL; any of them can serve any session."""
    import server.app  # noqa: F401 - imported here, once: _released must not spend a second importing after a death
    from server.workers import run_processes

    banner = f"examhub: {n} hub processes on http://{settings.host}:{settings.port}"
    return run_processes(_worker, (settings,), n, "examhub", banner, on_death=functools.partial(_released, settings))


def _released(settings: Settings, host: str) -> None:
    """A hub process has ended: end its lease now (RedisSessionStore.release_lease), so that its students count
    as dropped when they reconnect to the others, not as second devices for the lease's remaining seconds."""
    from server.app import connect_redis
    from storage.keys import Keys
    from storage.scripts import Scripts
    from storage.session_store import RedisSessionStore

    async def release() -> None:
        redis = connect_redis(settings)
        try:
            async with asyncio.timeout(LEASE_RELEASE_S):
                await RedisSessionStore.release_lease(redis, Scripts.load(), Keys(settings.redis_prefix), host)
        finally:
            await redis.aclose()

    if host:
        _run(release())


MAX_WORKERS = 64


def _workers(text: str) -> int:
    """--workers: a whole number of processes, 1 to MAX_WORKERS (argparse turns the error into exit 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{n} is not between 1 and {MAX_WORKERS}")
    return n


def _run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def _register_commands(sub: Any) -> None:
    import importlib
    import pkgutil

    import server.commands

    for info in sorted(pkgutil.iter_modules(server.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"server.commands.{info.name}").register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="examhub", description="Real-time exam sessions over WebSockets.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "serve the hub (embedded PostgreSQL/Redis when DATABASE_URL/REDIS_URL are unset)"),
        ("demo", "seed the demo bank, serve, and print how to take a test"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--workers", type=_workers, default=1,
                       help=f"hub processes sharing the port (SO_REUSEPORT), 1 to {MAX_WORKERS}")  # fmt: skip
    sub.add_parser("migrate", help="apply the SQL migrations")
    sub.add_parser("seed", help="load the demo question bank and templates (idempotent)")
    sitp = sub.add_parser("sit", help="sit an exam in this terminal")
    sitp.add_argument("--url", default="http://127.0.0.1:8080")
    sitp.add_argument("--template", default="biology-quick-10", help="template slug or id")
    sitp.add_argument("--name", default="Terminal student")
    sitp.add_argument("--auto", action="store_true", help="answer at random, without asking")
    sitp.add_argument("--msgpack", action="store_true", help="speak msgpack instead of JSON")
    _register_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every initdb/pg_ctl line at INFO

    if args.command == "sit":
        from server.sit import sit

        return asyncio.run(sit(args.url, args.template, args.name, auto=args.auto, binary=args.msgpack))
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"examhub: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                                   ("data_dir", getattr(args, "data_dir", None))) if v is not None}  # fmt: skip
    settings = settings.with_(**overrides)
    if hasattr(args, "run") and not getattr(args, "storage", True):
        code: int = _run(args.run(settings, args))
        return code
    with resolved(settings) as ready:
        if hasattr(args, "run"):
            return int(_run(args.run(ready, args)))
        if args.command == "migrate":
            _run(_migrate(ready))
        elif args.command == "seed":
            _run(_seed(ready))
        elif args.command == "serve":
            if args.workers > 1:
                return _serve_workers(ready, args.workers)
            _run(_serve(ready, banner=False))
        elif args.command == "demo":
            _run(_seed(ready, admin=True))
            _run(_serve(ready, banner=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
