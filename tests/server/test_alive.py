"""Which Redis versions have sharded pub/sub (server/alive.py): on a cluster of older primaries a hub holds no
sharded alive channel and does not say it listens (tests/cluster/ has the rest, on a real cluster)."""

from __future__ import annotations

import pytest

from server.alive import has_sharded_pubsub


@pytest.mark.parametrize(
    ("version", "has"),
    [("7.0.15", True), ("7.2.4", True), ("8.0.0", True), ("10.0", True), ("6.2.14", False), ("6.0.0", False),
     ("5", False), ("", False), ("unknown", False)],
)  # fmt: skip
def test_sharded_pubsub_came_with_redis_7(version: str, has: bool) -> None:
    assert has_sharded_pubsub(version) is has
