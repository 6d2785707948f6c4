"""Does this Redis keep what it acknowledges? (append-only file on, fsync, no eviction)"""

from __future__ import annotations

from redis.exceptions import ResponseError

from storage.scripts import AnyRedis


async def redis_problems(redis: AnyRedis) -> list[str]:
    """What would let Redis lose an acknowledged write; empty when it is configured to keep them."""
    try:
        config = {}
        for name in ("appendonly", "appendfsync", "maxmemory-policy"):
            got = await redis.config_get(name)
            config.update(got if isinstance(got, dict) else {})
    except ResponseError as exc:  # managed services often disable CONFIG
        return [f"cannot read the Redis configuration ({exc}); make sure AOF is on and eviction is off"]
    problems = []
    if config.get("appendonly") != "yes":
        problems.append("appendonly is off: a Redis restart loses acknowledged answers")
    elif config.get("appendfsync") != "always":
        # everysec survives a process crash (the page cache does) but not a power cut: up to 1 s of
        # acknowledged answers would be gone.
        problems.append(f"appendfsync is {config.get('appendfsync')!r}: an acknowledged answer needs 'always'")
    if config.get("maxmemory-policy") != "noeviction":
        problems.append(
            f"maxmemory-policy is {config.get('maxmemory-policy')!r}: Redis may evict live sessions; use noeviction"
        )
    return problems
