"""The client's duplicate filter: duplicates of answered queries are dropped and counted, and the
filter forgets answers older than its window (a long-lived client must not grow without bound)."""

from __future__ import annotations

import time

import numpy as np

from infaas import bus
from infaas.client import InfaasClient, RecentIds
from infaas.schemas.codec import default_codec


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_recent_ids_forget_what_is_older_than_the_window():
    clock = Clock()
    recent = RecentIds(window_s=10.0, clock=clock)
    for i in range(10_000):  # one answer every 10 ms for 100 s
        clock.now = i * 0.01
        recent.add(f"q{i}")
    assert len(recent) <= 1001  # only the last 10 s are kept
    assert "q9999" in recent and "q9000" in recent
    assert "q0" not in recent and "q8999" not in recent
    clock.now += 11.0
    assert "q9999" not in recent  # expired even before the next add prunes it


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def result(query_id: str) -> dict:
    return {"query_id": query_id, "app_id": "demo", "status": "OK", "error": None, "outputs": [], "model": "m",
            "variant": "v", "hardware": "cpu", "accuracy": 0.9, "latency_ms": 1.0, "queue_ms": 0.0, "compute_ms": 1.0,
            "best_accuracy_within_slo": None, "fastest_latency_ms": None, "completed_at": 0}


def test_duplicates_are_dropped_within_the_window_and_forgotten_after(settings):
    """Real Kafka; this test answers the queries itself (no dispatcher reads its own queries topic)."""
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}.client")
    bus.ensure_core_topics(own)
    codec, producer = default_codec(), bus.producer(own)
    with InfaasClient(own, app_id="demo", duplicate_window_s=1.0) as client:
        futures = {f"q{i}": client.submit(np.zeros((1, 2), np.float32), variant="v", query_id=f"q{i}")
                   for i in range(50)}
        for query_id in [*futures, *futures]:  # every answer twice: at least once delivery
            producer.produce(client.reply_topic, key=query_id.encode(), value=codec.encode("Result", result(query_id)))
        producer.flush(10)
        assert all(f.result(30).ok for f in futures.values())
        wait_until(lambda: client.duplicates_dropped == 50)
        assert len(client._answered) == 50
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 1.0 and "q49" not in client._answered)
        client.submit(np.zeros((1, 2), np.float32), variant="v", query_id="late")
        producer.produce(client.reply_topic, key=b"late", value=codec.encode("Result", result("late")))
        producer.flush(10)
        wait_until(lambda: "late" in client._answered)
        assert len(client._answered) == 1  # the 50 older answers were forgotten
