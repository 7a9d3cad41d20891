"""The monitor's window bookkeeping (what its Faust tables hold): a report counts once per window,
even when it is processed again after a restart; the published LoadWindow keeps its schema."""

from __future__ import annotations

import pytest

from infaas.schemas.codec import default_codec
from infaas.streams.faust_support import offsets_skipped
from infaas.streams.monitor import count_into, load_window, report_id, report_loads


def report(worker: str, at: int, served: int, variant: str = "v1") -> dict:
    metrics = {"variant_id": variant, "replicas": 1, "served": served, "errors": 1, "deadline_missed": 2,
               "qps": 0.0, "exec_ms": 1.0, "p50_ms": 1.0, "p99_ms": 9.0, "avg_latency_ms": 4.0, "queue_len": 3,
               "avg_batch": 1.0, "memory_mb": 1.0, "avg_rows": 1.0, "demand_accuracy": 0.0, "demand_slo_ms": 0.0}
    return {"worker_id": worker, "hardware": "cpu", "host": "h", "pid": 1, "reported_at": at, "interval_ms": 1000,
            "cpu_util": 0.5, "gpu_util": None, "memory_mb": 1.0, "memory_budget_mb": 1.0, "variants": [metrics]}


def fill(reports: list[dict]) -> dict:
    windows: dict = {}
    for r in reports:
        for key, load in report_loads(r):
            updated = count_into(windows.get(key), report_id(r), load)
            if updated is not None:
                windows[key] = updated
    return windows


def test_a_report_processed_again_is_not_counted_twice():
    reports = [report("w1", 1000, 5), report("w2", 1001, 7), report("w1", 2000, 3)]
    once = fill(reports)
    replayed = fill(reports + reports[1:])  # a restart processes the uncommitted tail again
    assert replayed == once
    assert once[("VARIANT", "v1")]["served"] == 15 and once[("WORKER", "w1")]["served"] == 8
    assert once[("WORKER", "w1")]["util_sum"] == 1.0 and once[("VARIANT", "v1")]["max_queue"] == 3


def test_a_late_report_republishes_its_window_with_the_new_totals():
    window = count_into(None, "w1@1000", report_loads(report("w1", 1000, 5))[0][1])
    published = {**window, "published": True}
    late = count_into(published, "w2@1500", report_loads(report("w2", 1500, 4))[0][1])
    assert late["served"] == 9 and late["published"] is False
    assert count_into(late, "w2@1500", report_loads(report("w2", 1500, 4))[0][1]) is None


def test_the_published_window_is_a_valid_load_window():
    window = fill([report("w1", 10_000, 6), report("w1", 11_000, 4)])[("WORKER", "w1")]
    record = load_window("WORKER", "w1", 10, 10_000, window)
    decoded = default_codec().decode_as("LoadWindow", default_codec().encode("LoadWindow", record))
    assert decoded == {**record, "qps": pytest.approx(1.4)}  # Avro floats are 32-bit
    assert (record["served"], record["deadline_missed"], record["qps"]) == (10, 4, 1.4)
    assert record["avg_latency_ms"] == 4.0 and record["avg_util"] == 0.5 and record["p99_ms"] == 9.0


def test_offsets_skipped_are_the_ones_between_the_expected_and_the_handed():
    assert list(offsets_skipped(10, 13)) == [10, 11, 12]
    assert not offsets_skipped(10, 10)  # the expected one
    assert not offsets_skipped(10, 7)  # handed again after a seek back: nothing missing
    assert not offsets_skipped(None, 42)  # nothing expected yet (no committed offset)
