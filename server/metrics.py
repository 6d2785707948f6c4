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

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from storage.cache import Tier

CONTENT_TYPE = CONTENT_TYPE_LATEST
MESSAGE_TYPES = ("answer", "event", "heartbeat", "submit", "invalid")
RATE_SCOPES = ("ip", "user", "ws")
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PerMessage(Collector):
    """The two metrics every student message touches, counted in plain ints and floats and read at each scrape.

    prometheus_client's Counter.inc and Histogram.observe take a lock and check the metric per call (~1.2 us for
    the pair per answer, ~8% of the hub's own Python per answer); the hub counts on its event loop's thread only,
    so no lock is needed, and a scrape turns the counts into the same samples the library's metrics would give."""

    def __init__(self) -> None:
        self.messages = dict.fromkeys(MESSAGE_TYPES, 0)
        self.ack_counts = [0] * (len(ACK_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self.ack_sum = 0.0

    def received(self, message_type: str) -> None:
        self.messages[message_type] = self.messages.get(message_type, 0) + 1

    def acked(self, seconds: float) -> None:
        self.ack_counts[bisect_left(ACK_BUCKETS, seconds)] += 1
        self.ack_sum += seconds

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily("examhub_ws_messages", "Frames received, by type", labels=["type"])
        for message_type, count in self.messages.items():
            messages.add_metric([message_type], count)
        yield messages
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, ACK_BUCKETS), "+Inf"), self.ack_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "examhub_ack_latency_seconds",
            "Frame received to its acknowledgement queued, for messages that wrote to Redis",
            buckets=buckets,
            sum_value=self.ack_sum,
        )


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("examhub_ws_connections", "Live student connections", registry=r)
        self.per_message = PerMessage()
        r.register(self.per_message)
        self.received = self.per_message.received  # (bound once: the hub calls them per message)
        self.acked = self.per_message.acked
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
        self._hits = {t.value: self.cache_hits.labels(t.value) for t in Tier}
        self._misses = {t.value: self.cache_misses.labels(t.value) for t in Tier}
        for scope in RATE_SCOPES:
            self.rate_limited.labels(scope)  # present (at 0) from the start, so a rate() has a baseline

    def watch_connections(self, count: Callable[[], int]) -> None:
        """The gauge reads `count()` at each scrape: nothing to update on connect or disconnect."""
        self.connections.set_function(lambda: float(count()))

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
