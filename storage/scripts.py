"""The Lua scripts in storage/lua/, loaded once and called by SHA (see writer.py for how)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

AnyRedis = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()  # Redis names scripts by their SHA-1


def _read(name: str) -> str:
    return resources.files("storage").joinpath("lua", name).read_text(encoding="utf-8")


def _load(name: str) -> Script:
    return Script(name, _read("_lib.lua") + "\n" + _read(f"{name}.lua"))


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

    @classmethod
    def load(cls) -> Scripts:
        return cls(*(_load(n) for n in _NAMES))

    def all(self) -> tuple[Script, ...]:
        return tuple(getattr(self, n) for n in _NAMES)

    async def register(self, redis: AnyRedis) -> None:
        """SCRIPT LOAD every script (on every primary, for a cluster). Needed again after Redis restarts."""
        for s in self.all():
            sha = await redis.script_load(s.source)
            if sha != s.sha:
                raise RuntimeError(f"Redis hashed {s.name} as {sha}, expected {s.sha}")
