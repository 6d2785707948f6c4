"""The hub's Prometheus metrics, over a registry each app owns (not the process-wide default one: a test
process creates many apps, a hub exactly one). Served at /metrics (server/routes/ops.py).

Name                                    Type       Labels  What
examhub_ws_connections                  gauge              live student connections in this process
examhub_ws_messages_total               counter    type    frames received (answer, event, heartbeat, submit, invalid)
examhub_ack_latency_seconds             histogram          frame received -> its ack queued, for messages that wrote
examhub_flush_lag_seconds               histogram          attempt finished (Redis clock) -> its PostgreSQL commit
examhub_outbox_length                   gauge              outbox entries seen by this flusher's last pass
examhub_flushed_attempts_total          counter            attempts this process's flusher wrote
examhub_cache_hits_total                counter    tier    tiered cache lookups answered from Redis
examhub_cache_misses_total              counter    tier    lookups that called the loader
examhub_rate_limited_total              counter    scope   requests or messages refused (ip, user, ws)

storage/ must not import server/: `Metrics` meets the small observer Protocols storage/ defines
(storage.flusher.FlushObserver, storage.cache.CacheObserver) and is handed to those objects at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage.cache import Tier

CONTENT_TYPE = CONTENT_TYPE_LATEST
MESSAGE_TYPES = ("answer", "event", "heartbeat", "submit", "invalid")
RATE_SCOPES = ("ip", "user", "ws")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("examhub_ws_connections", "Live student connections", registry=r)
        self.messages = Counter("examhub_ws_messages", "Frames received, by type", ["type"], registry=r)
        self.ack_latency = Histogram(
            "examhub_ack_latency_seconds",
            "Frame received to its acknowledgement queued, for messages that wrote to Redis",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.flush_lag = Histogram(
            "examhub_flush_lag_seconds",
            "Attempt finished to its PostgreSQL commit",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
            registry=r,
        )
        self.outbox = Gauge("examhub_outbox_length", "Entries in the outbox streams at the last flush pass", registry=r)
        self.flushed = Counter("examhub_flushed_attempts", "Attempts written to PostgreSQL", registry=r)
        self.cache_hits = Counter("examhub_cache_hits", "Cache lookups answered from Redis", ["tier"], registry=r)
        self.cache_misses = Counter("examhub_cache_misses", "Cache lookups that loaded", ["tier"], registry=r)
        self.rate_limited = Counter("examhub_rate_limited", "Requests or messages refused", ["scope"], registry=r)
        # Children resolved once: .labels() is a dictionary lookup under a lock, on the hot path otherwise.
        self._messages = {t: self.messages.labels(t) for t in MESSAGE_TYPES}
        self._hits = {t.value: self.cache_hits.labels(t.value) for t in Tier}
        self._misses = {t.value: self.cache_misses.labels(t.value) for t in Tier}
        for scope in RATE_SCOPES:
            self.rate_limited.labels(scope)  # present (at 0) from the start, so a rate() has a baseline

    def watch_connections(self, count: Callable[[], int]) -> None:
        """The gauge reads `count()` at each scrape: nothing to update on connect or disconnect."""
        self.connections.set_function(lambda: float(count()))

    def received(self, message_type: str) -> None:
        child = self._messages.get(message_type)
        (child if child is not None else self.messages.labels(message_type)).inc()

    def refused(self, scope: str) -> None:
        self.rate_limited.labels(scope).inc()

    # storage.cache.CacheObserver
    def on_cache(self, tier: str, hit: bool) -> None:
        (self._hits if hit else self._misses)[tier].inc()

    # storage.flusher.FlushObserver
    def on_flushed(self, lags_s: Sequence[float]) -> None:
        for lag in lags_s:
            self.flush_lag.observe(max(0.0, lag))
        self.flushed.inc(len(lags_s))

    def on_outbox(self, length: int) -> None:
        self.outbox.set(length)

    def render(self) -> bytes:
        return generate_latest(self.registry)
