"""The streaming-analytics example (examples/analytics/app.py) on the real stack: a Faust app of its
own reading an app's results and the monitor's load windows, publishing per-window SLO attainment,
throughput and cost to `infaas.analytics` and Cassandra, computed from exactly what it was given."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from infaas import bus
from infaas.schemas.codec import Codec
from infaas.store import Store
from tests.conftest import settings_env
from tests.unit.test_executors import variant

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics" / "app.py"
CODEC = Codec()
WINDOW_S = 2
APP = "analytics-demo"


def result(query_id: str, status: str, variant_id: str, latency_ms: float, at_ms: int) -> dict:
    return {"query_id": query_id, "app_id": APP, "status": status, "error": None, "outputs": [], "model": "tiny",
            "variant": variant_id, "hardware": "cpu", "accuracy": 0.9, "latency_ms": latency_ms, "queue_ms": 0.0,
            "compute_ms": 1.0, "best_accuracy_within_slo": None, "fastest_latency_ms": None, "completed_at": at_ms}


def load_window(variant_id: str, start_ms: int, served: int, missed: int, avg_latency_ms: float) -> dict:
    return {"scope": "VARIANT", "key": variant_id, "window_s": 1, "window_start": start_ms, "served": served,
            "errors": 0, "deadline_missed": missed, "qps": float(served + missed), "avg_latency_ms": avg_latency_ms,
            "p99_ms": avg_latency_ms, "max_queue_len": 0, "avg_util": 0.0}


@pytest.fixture(scope="module")
def analytics(settings, tmp_path_factory):
    priced = dataclasses.replace(variant("ort-fp32", batch=1), cost_per_1k=2.0)
    with Store(settings) as store:
        store.put_variant(priced)
    bus.ensure_topics(settings, {settings.results_topic(APP): bus.TopicSpec(1)})
    log = (tmp_path_factory.mktemp("analytics") / "analytics.log").open("w")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--apps", APP, "--window", str(WINDOW_S), "--grace", "1"],
                            env=settings_env(settings), stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        for line in proc.stdout:
            if "analytics ready" in line:
                break
        else:
            pytest.fail(f"the analytics app exited ({proc.wait()}) before it was ready; see {log.name}")
        yield priced.variant_id
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def published(settings, expected: int, timeout_s: float = 90.0) -> dict[tuple, dict]:
    consumer = bus.consumer(settings, f"{settings.topic_prefix}-test-analytics-reader")
    consumer.assign([TopicPartition(settings.topic("analytics"), 0, OFFSET_BEGINNING)])
    found: dict[tuple, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if not message.error():
                    record = CODEC.decode_as("AnalyticsWindow", message.value())
                    found[(record["scope"], record["key"], record["window_start"])] = record
    finally:
        consumer.close()
    return found


def test_windows_add_up_to_the_results_and_loads_given(settings, analytics):
    variant_id = analytics
    start = (int(time.time() * 1000) // (WINDOW_S * 1000) - 5) * WINDOW_S * 1000  # a window well in the past
    producer = bus.producer(settings)
    answers = [result("a", "OK", variant_id, 10.0, start + 100), result("b", "OK", variant_id, 30.0, start + 900),
               result("c", "DEADLINE_EXCEEDED", variant_id, 0.0, start + 1500)]
    loads = [load_window(variant_id, start, 4, 1, 5.0), load_window(variant_id, start + 1000, 2, 0, 8.0)]
    for r in answers:
        producer.produce(settings.results_topic(APP), key=r["query_id"].encode(), value=CODEC.encode("Result", r))
    for w in loads:
        producer.produce(settings.topic("load"), key=w["key"].encode(), value=CODEC.encode("LoadWindow", w))
    # A later event on each stream moves the clock past the window's end and grace: the window closes.
    later = start + 3 * WINDOW_S * 1000
    producer.produce(settings.results_topic(APP), value=CODEC.encode("Result", result("d", "OK", variant_id, 1.0, later)))
    producer.produce(settings.topic("load"), value=CODEC.encode("LoadWindow", load_window(variant_id, later, 1, 0, 1.0)))
    producer.flush(10)

    windows = published(settings, expected=2)
    app_window = windows[("APP", APP, start)]
    assert (app_window["answered"], app_window["ok"]) == (3, 2)
    assert app_window["slo_attainment"] == pytest.approx(2 / 3)
    assert app_window["throughput_qps"] == pytest.approx(2 / WINDOW_S)
    assert app_window["avg_latency_ms"] == pytest.approx(20.0)
    assert app_window["cost_usd"] == pytest.approx(2 * 0.002)
    variant_window = windows[("VARIANT", variant_id, start)]
    assert (variant_window["answered"], variant_window["ok"]) == (7, 6)
    assert variant_window["avg_latency_ms"] == pytest.approx((4 * 5.0 + 2 * 8.0) / 6)
    assert variant_window["cost_usd"] == pytest.approx(6 * 0.002)
    with Store(settings) as store:
        deadline = time.monotonic() + 30
        rows = []
        while not rows and time.monotonic() < deadline:
            rows = [r for r in store.analytics_windows("APP", APP, WINDOW_S, day=None, limit=10)
                    if r["window_start"] == start]
            time.sleep(0.2)
    assert rows and rows[0]["ok"] == 2
