"""The per-message metrics are counted in plain numbers (server/metrics.py, PerMessage): a scrape must show exactly
what prometheus_client's own Counter and Histogram would have shown for the same messages."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from server.metrics import ACK_BUCKETS, MESSAGE_TYPES, Metrics

LATENCIES = (0.0, 0.0004, 0.001, 0.0010001, 0.003, 0.05, 0.0500001, 0.7, 5.0, 6.0, 120.0)
MESSAGES = ("answer", "answer", "heartbeat", "invalid", "answer", "submit")


def _samples(exposition: bytes, *names: str) -> list[str]:
    return sorted(line for line in exposition.decode().splitlines() if line.startswith(names))


def test_per_message_metrics_read_as_prometheus_clients_own() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    counter = Counter("examhub_ws_messages", "Frames received, by type", ["type"], registry=reference)
    for t in MESSAGE_TYPES:
        counter.labels(t)
    histogram = Histogram("examhub_ack_latency_seconds", "Frame received to its acknowledgement queued, for "
                          "messages that wrote to Redis", buckets=ACK_BUCKETS, registry=reference)  # fmt: skip
    for t in MESSAGES:
        metrics.received(t)
        counter.labels(t).inc()
    for seconds in LATENCIES:
        metrics.acked(seconds)
        histogram.observe(seconds)
    names = ("examhub_ws_messages_total", "examhub_ack_latency_seconds_bucket", "examhub_ack_latency_seconds_count",
             "examhub_ack_latency_seconds_sum")  # fmt: skip
    ours, theirs = _samples(metrics.render(), *names), _samples(generate_latest(reference), *names)
    assert ours == theirs
    assert 'examhub_ws_messages_total{type="answer"} 3.0' in ours
    assert 'examhub_ack_latency_seconds_bucket{le="0.001"} 3.0' in ours  # <= the bound counts in its bucket
    assert 'examhub_ack_latency_seconds_bucket{le="+Inf"} 11.0' in ours


def test_a_message_type_outside_the_list_is_counted_too() -> None:
    metrics = Metrics()
    metrics.received("something_new")
    assert b'examhub_ws_messages_total{type="something_new"} 1.0' in metrics.render()
