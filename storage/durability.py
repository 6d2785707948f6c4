"""Does this Redis keep what it acknowledges? (append-only file on, fsync, no eviction; on every primary of a
cluster)"""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from storage.scripts import AnyRedis

_SETTINGS = ("appendonly", "appendfsync", "maxmemory-policy")


def _text(reply: object) -> dict[str, str]:
    """A CONFIG GET reply as text, whether the client decodes replies or not."""
    if not isinstance(reply, dict):
        return {}
    return {_str(k): _str(v) for k, v in reply.items() if v is not None}


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _configs(redis: AnyRedis) -> dict[str, dict[str, str]]:
    """The settings that matter, per server: {"": config} for one Redis, {"host:port": config} per primary of
    a cluster (where a plain CONFIG GET would ask one node only)."""
    out: dict[str, dict[str, str]] = {}
    for name in _SETTINGS:
        if isinstance(redis, RedisCluster):
            per_node = await redis.config_get(name, target_nodes=RedisCluster.PRIMARIES)
            for node, on_node in per_node.items():
                out.setdefault(str(node), {}).update(_text(on_node))
        else:
            out.setdefault("", {}).update(_text(await redis.config_get(name)))
    return out


async def redis_problems(redis: AnyRedis) -> list[str]:
    """What would let Redis lose an acknowledged write; empty when it is configured to keep them."""
    try:
        configs = await _configs(redis)
    except ResponseError as exc:  # managed services often disable CONFIG
        return [f"cannot read the Redis configuration ({exc}); make sure AOF is on and eviction is off"]
    problems = []
    for node, config in sorted(configs.items()):
        where = f"{node}: " if node else ""
        if config.get("appendonly") != "yes":
            problems.append(f"{where}appendonly is off: a Redis restart loses acknowledged answers")
        elif config.get("appendfsync") != "always":
            # everysec survives a process crash (the page cache does) but not a power cut: up to 1 s of
            # acknowledged answers would be gone.
            problems.append(
                f"{where}appendfsync is {config.get('appendfsync')!r}: an acknowledged answer needs 'always'"
            )
        if config.get("maxmemory-policy") != "noeviction":
            problems.append(
                f"{where}maxmemory-policy is {config.get('maxmemory-policy')!r}: Redis may evict live sessions; "
                "use noeviction"
            )
    return problems
