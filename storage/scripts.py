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


def lua_source(name: str) -> str:
    """The text of one file of storage/lua/."""
    return resources.files("storage").joinpath("lua", name).read_text(encoding="utf-8")


def many_source(body: str, loop: str | None = None) -> str:
    """A script's text (`body`) as a "many" script: wrapped as `one(KEYS, ARGV)` and run for each caller in turn by
    lua/_many.lua (or by `loop`: loadtest/lua_variants.py measures another)."""
    wrapped = f"local function one(KEYS, ARGV)\n{body}\nend\n"
    return lua_source("_lib.lua") + "\n" + wrapped + (lua_source("_many.lua") if loop is None else loop)


def _load(name: str) -> Script:
    return Script(name, lua_source("_lib.lua") + "\n" + lua_source(f"{name}.lua"))


def _load_many(name: str) -> Script:
    """`name` for several callers in one call (lua/_many.lua): the writer merges a pipeline's calls into it."""
    return Script(f"{name}_many", many_source(lua_source(f"{name}.lua")))


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
