"""The Lua scripts in storage/lua/, loaded once and called by SHA (see writer.py for how)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

AnyRedis = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)  # Redis names scripts by their SHA-1; hashed once, not per call (hot path)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _read(name: str) -> str:
    return resources.files("storage").joinpath("lua", name).read_text(encoding="utf-8")


def _load(name: str) -> Script:
    return Script(name, _read("_lib.lua") + "\n" + _read(f"{name}.lua"))


def _load_many(name: str) -> Script:
    """`name` for several callers in one call (lua/_many.lua): the writer merges a pipeline's calls into it."""
    body = f"local function one(KEYS, ARGV)\n{_read(f'{name}.lua')}\nend\n"
    return Script(f"{name}_many", _read("_lib.lua") + "\n" + body + _read("_many.lua"))


_NAMES = ("create", "open", "apply", "expire", "flushed", "leave", "control", "publish", "lease")


@dataclass(frozen=True, slots=True)
class Scripts:
    create: Script
    open: Script
    apply: Script
    expire: Script
    flushed: Script
    leave: Script
    control: Script
    publish: Script
    lease: Script
    apply_many: Script  # apply for a run of callers at once (storage/writer.py)

    @classmethod
    def load(cls) -> Scripts:
        return cls(**{n: _load(n) for n in _NAMES}, apply_many=_load_many("apply"))

    def all(self) -> tuple[Script, ...]:
        return (*(getattr(self, n) for n in _NAMES), self.apply_many)

    def many(self, script: Script) -> Script | None:
        """The script that runs several calls of `script` in one, if it has one."""
        return self.apply_many if script.sha == self.apply.sha else None

    async def register(self, redis: AnyRedis) -> None:
        """SCRIPT LOAD every script (on every primary, for a cluster). Needed again after Redis restarts."""
        for s in self.all():
            sha = await redis.script_load(s.source)
            if sha != s.sha:
                raise RuntimeError(f"Redis hashed {s.name} as {sha}, expected {s.sha}")
