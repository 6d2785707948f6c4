"""One frozen Settings, built from the environment once at start-up and passed down. Nothing else reads
os.environ."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from storage.ratelimit import Rate


class Durability(StrEnum):
    REQUIRE = "require"  # refuse to start when Redis could lose acknowledged writes
    WARN = "warn"  # start, but log loudly (development against a throwaway Redis)


# Generous defaults: a whole school behind one NAT address starts its exams through one IP, and a client that
# reconnects resends every unacknowledged message at once (a NEET mock paper has 180 questions).
REST_IP_RATE = Rate(50, 1.0, burst=100)
REST_USER_RATE = Rate(20, 1.0, burst=60)
WS_MSGS_RATE = Rate(20, 1.0, burst=200)


class SettingsError(ValueError):
    pass


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 0, hi: int = 2**31) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _rate(env: Mapping[str, str], name: str, default: Rate | None) -> Rate | None:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        return Rate.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be a boolean (1/0/true/false), got {raw!r}")


CRASH_POINTS = frozenset({"before_write", "after_write", "after_ack", "after_commit"})


def _crash_point(raw: str) -> tuple[str, int] | None:
    """`NAME[:N]` for the fault suite's crash switch; empty: off."""
    raw = raw.strip()
    if not raw:
        return None
    name, _, count = raw.partition(":")
    if name not in CRASH_POINTS or not (count or "1").isdigit() or int(count or "1") < 1:
        raise SettingsError(f"EXAMHUB_CRASH_POINT must be one of {sorted(CRASH_POINTS)}, optionally ':N' (N >= 1)")
    return name, int(count or "1")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None  # None: start an embedded PostgreSQL in data_dir
    redis_url: str | None = None  # None: start an embedded Redis in data_dir
    redis_cluster: bool = False
    redis_prefix: str = "eh"
    redis_durability: Durability = Durability.REQUIRE
    redis_timeout_s: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # how browsers reach us; default http://host:port
    data_dir: Path = Path(".examhub")
    secret: str | None = None  # HMAC key for tokens; None: a random one kept in data_dir
    allowed_origins: tuple[str, ...] = ()  # besides the hub's own origin
    max_message_bytes: int = 64 * 1024
    send_queue_frames: int = 256
    heartbeat_s: float = 15.0
    max_bad_frames: int = 20
    # A connection refused more than this many messages beyond its rate (rate_ws_msgs) is closed (4529): a flood
    # costs the hub a decode and an error frame per message until then. Refusals drain at the message rate.
    max_refused_msgs: int = 50
    created_ttl_s: int = 24 * 3600  # a started-but-never-opened session is forgotten after this
    flushed_ttl_s: int = 3600  # a finished session stays readable in Redis this long after its flush
    session_token_slack_s: int = 6 * 3600  # a session token outlives the exam's duration by this much
    user_token_ttl_s: int = 7 * 24 * 3600
    flush_batch: int = 200
    flush_lanes: int = 2  # flusher consumers per process, their transactions overlapping (storage/flusher.py)
    flush_claim_idle_ms: int = 30_000
    sweep_interval_s: float = 1.0
    pg_pool_min: int = 2
    pg_pool_max: int = 10
    access_log: bool = False
    # Rate limits (storage/ratelimit.py); None: no limit. REST per client IP (the WebSocket handshake
    # included) and per user (a valid bearer token's subject); WebSocket messages per session.
    rate_rest_ip: Rate | None = REST_IP_RATE
    rate_rest_user: Rate | None = REST_USER_RATE
    rate_ws_msgs: Rate | None = WS_MSGS_RATE
    cache_enabled: bool = True  # EXAMHUB_CACHE=off: every read from PostgreSQL (for benchmarks)
    cache_warm_ttl_s: int = 3 * 3600  # the tiered cache's warm tier (storage/cache.py); 1 to 6 h
    run_background: bool = True  # flusher and sweeper (tests switch them off to drive them by hand)
    # Test-only (the fault suite, loadtest/faults): EXAMHUB_CRASH_POINT=NAME[:N] makes the process os._exit(137)
    # the Nth time (default 1st) it reaches NAME: before_write, after_write, after_ack (of a student's message, in
    # server/hub.py), after_commit (storage/flusher.py).
    crash_point: tuple[str, int] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        try:
            durability = Durability(env.get("EXAMHUB_REDIS_DURABILITY", "require"))
        except ValueError:
            raise SettingsError("EXAMHUB_REDIS_DURABILITY must be 'require' or 'warn'") from None
        origins = tuple(o.strip().rstrip("/") for o in env.get("EXAMHUB_ALLOWED_ORIGINS", "").split(",") if o.strip())
        prefix = env.get("EXAMHUB_REDIS_PREFIX", "eh")
        if not prefix or "{" in prefix or "}" in prefix:
            raise SettingsError("EXAMHUB_REDIS_PREFIX must be non-empty and contain no braces")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster=_bool(env, "EXAMHUB_REDIS_CLUSTER", False),
            redis_prefix=prefix,
            redis_durability=durability,
            host=env.get("EXAMHUB_HOST", "127.0.0.1"),
            port=_int(env, "EXAMHUB_PORT", 8080, 0, 65535),
            public_url=(env.get("EXAMHUB_PUBLIC_URL") or "").rstrip("/") or None,
            data_dir=Path(env.get("EXAMHUB_DATA_DIR", ".examhub")),
            secret=env.get("EXAMHUB_SECRET") or None,
            allowed_origins=origins,
            max_message_bytes=_int(env, "EXAMHUB_MAX_MESSAGE_BYTES", 64 * 1024, 1024, 4 * 1024 * 1024),
            send_queue_frames=_int(env, "EXAMHUB_SEND_QUEUE", 256, 8, 100_000),
            heartbeat_s=float(_int(env, "EXAMHUB_HEARTBEAT_S", 15, 1, 300)),
            created_ttl_s=_int(env, "EXAMHUB_CREATED_TTL_S", 24 * 3600, 60),
            flushed_ttl_s=_int(env, "EXAMHUB_FLUSHED_TTL_S", 3600, 1),
            flush_batch=_int(env, "EXAMHUB_FLUSH_BATCH", 200, 1, 10_000),
            flush_lanes=_int(env, "EXAMHUB_FLUSH_LANES", 2, 1, 16),
            pg_pool_max=_int(env, "EXAMHUB_PG_POOL_MAX", 10, 1, 1000),
            access_log=_bool(env, "EXAMHUB_ACCESS_LOG", False),
            rate_rest_ip=_rate(env, "EXAMHUB_RATE_REST_IP", REST_IP_RATE),
            rate_rest_user=_rate(env, "EXAMHUB_RATE_REST_USER", REST_USER_RATE),
            rate_ws_msgs=_rate(env, "EXAMHUB_RATE_WS_MSGS", WS_MSGS_RATE),
            cache_warm_ttl_s=_int(env, "EXAMHUB_CACHE_WARM_TTL_S", 3 * 3600, 3600, 6 * 3600),
            cache_enabled=_bool(env, "EXAMHUB_CACHE", True),
            flush_claim_idle_ms=_int(env, "EXAMHUB_FLUSH_CLAIM_IDLE_MS", 30_000, 500, 3_600_000),
            crash_point=_crash_point(env.get("EXAMHUB_CRASH_POINT", "")),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
