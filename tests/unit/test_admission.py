"""Admission follows the drain rate the replicas were observed at, not only the profile: the pure
rules, and the dispatcher's view taking the speed from the workers' reports."""

import time
from types import SimpleNamespace

import pytest

from infaas import views
from infaas.policies.selection import (
    NO_FEASIBLE_VARIANT,
    OK,
    Request,
    estimated_queue,
    observed_batch_ms,
    queue_wait_ms,
    select,
    slowdown,
)
from infaas.policies.snapshot import ACTIVE, Snapshot, VariantLive, WorkerLive
from infaas.views import Catalog, SystemView
from tests.unit.test_dispatcher import CODEC, worker_report
from tests.unit.test_selection import LARGE, variant

# LARGE: a batch of 8 in 13 ms by its profile (1 ms a row + 5 ms).
PROFILED_BATCH_MS = LARGE.latency_at(8)


def test_a_batch_time_is_scaled_from_the_measured_mean_batch_along_the_profile():
    assert observed_batch_ms(LARGE, exec_ms=6.0, avg_batch=1.0) == pytest.approx(PROFILED_BATCH_MS)  # as profiled
    assert observed_batch_ms(LARGE, exec_ms=18.0, avg_batch=1.0) == pytest.approx(3 * PROFILED_BATCH_MS)
    assert observed_batch_ms(LARGE, exec_ms=26.0, avg_batch=8.0) == pytest.approx(26.0)
    assert observed_batch_ms(LARGE, exec_ms=0.0, avg_batch=0.0) == 0.0  # nothing ran: nothing measured


def test_slowdown_is_the_observed_over_the_profiled_and_never_below_one():
    assert slowdown(LARGE, 0.0) == 1.0
    assert slowdown(LARGE, 3 * PROFILED_BATCH_MS) == pytest.approx(3.0)
    assert slowdown(LARGE, PROFILED_BATCH_MS / 2) == 1.0  # a fast interval promises no more than the profile


def test_a_queue_drains_at_the_observed_speed():
    # At the profile: 26 ms drain 16 queries; three times slower, 26 ms drain 16/3.
    assert estimated_queue(LARGE, 1, reported=40, routed_since=10, elapsed_ms=26) == 34
    assert estimated_queue(LARGE, 1, reported=40, routed_since=10, elapsed_ms=26,
                           batch_ms=3 * PROFILED_BATCH_MS) == 45
    assert queue_wait_ms(LARGE, 16, 1, batch_ms=3 * PROFILED_BATCH_MS) == pytest.approx(
        3 * queue_wait_ms(LARGE, 16, 1))


def test_a_slowed_variant_is_not_admitted_past_what_it_drains_within_the_slo():
    # 40 queued: 5 batches = 65 ms by the profile, within a 100 ms SLO; at 3x the measured speed 195 ms.
    only = variant("only:ort-fp32:cpu-1t:b8", 0.98, 1.0, 5.0)
    workers = {"w1": WorkerLive("w1", "cpu", variants={only.variant_id: 1})}
    request = Request("demo", task="digits", latency_ms=100.0)

    def decide(batch_ms: float, queue_len: int = 40):
        live = {only.variant_id: VariantLive(ACTIVE, replicas=1, workers=("w1",), queue_len=queue_len,
                                             batch_ms=batch_ms)}
        return select(Snapshot(variants={only.variant_id: only}, live=live, workers=workers, at_ms=1), request)

    assert decide(0.0).status == OK and decide(PROFILED_BATCH_MS).status == OK
    slowed = decide(3 * PROFILED_BATCH_MS)
    assert slowed.status == NO_FEASIBLE_VARIANT  # shed at once by the dispatcher, not late by the worker
    # Its queue drained, it is admitted again however slow it was measured: it keeps running, and so
    # keeps being measured (a slow measure never shuts it out for good).
    assert decide(10 * PROFILED_BATCH_MS, queue_len=0).status == OK


def view_of_large(base_settings, monkeypatch, workers: list[str]) -> tuple[SystemView, dict]:
    """A dispatcher's view of LARGE, active on `workers` (a replica each), and its clock (ms, settable)."""
    clock = {"ms": int(time.time() * 1000)}
    monkeypatch.setattr(views, "time", SimpleNamespace(time=lambda: clock["ms"] / 1000, monotonic=time.monotonic))
    view = SystemView(base_settings)
    view.catalog = Catalog(apps=frozenset({"demo"}), variants={LARGE.variant_id: LARGE},
                           models={LARGE.model: (LARGE.task, LARGE.app_id, LARGE.public)})
    state = {"variant_id": LARGE.variant_id, "task": "digits", "state": "ACTIVE", "replicas": len(workers),
             "workers": workers, "qps": 0.0, "avg_latency_ms": 0.0, "queue_len": 0, "avg_rows": 1.0,
             "demand_accuracy": 0.0, "demand_slo_ms": 0.0, "updated_at": clock["ms"]}
    view._apply(base_settings.topic("state"), CODEC.encode("VariantState", state))
    return view, clock


def test_the_dispatchers_view_drains_each_variant_at_the_speed_its_workers_report(base_settings, monkeypatch):
    view, clock = view_of_large(base_settings, monkeypatch, ["w1"])
    now = clock["ms"]
    report = worker_report(now, queue_len=16)
    # The model runs as profiled (6 ms at batch 1), but each batch holds the replica three times as long
    # (results produced, delivered, committed, on contended cores): the queue drains at the latter.
    report["variants"][0].update(exec_ms=6.0, service_ms=18.0, avg_batch=1.0)
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", report))
    clock["ms"] = now + 26  # two full batches by the profile, two thirds of one at the measured pace
    view._rebuild()
    live = view.snapshot.live_of(LARGE.variant_id)
    assert live.batch_ms == pytest.approx(3 * PROFILED_BATCH_MS)
    assert live.queue_len == 11  # 16 - 26 ms * 8 / 39 ms, not the profile's 16 - 16 = 0
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", worker_report(now + 26, queue_len=0)))
    view._rebuild()  # an interval that ran nothing keeps the last measure
    assert view.snapshot.live_of(LARGE.variant_id).batch_ms == pytest.approx(3 * PROFILED_BATCH_MS)


def test_a_worker_reports_how_long_a_batch_held_its_replica():
    from infaas.consumers.reporting import VariantMetrics
    metrics = VariantMetrics()
    metrics.record([], errors=0, missed=0, rows=4, batches=4, exec_ms=120.0, busy_ms=180.0)
    metrics.record([], errors=0, missed=2, rows=0, batches=0, exec_ms=0.0, busy_ms=0.0)  # shed only
    taken = metrics.take()
    assert (taken["exec_ms"], taken["service_ms"]) == (30.0, 45.0)
    assert metrics.take()["service_ms"] == 0.0  # an interval with no batch measured nothing


def test_behind_a_queue_the_querys_own_run_is_slowed_as_observed_too():
    # A batch-1 variant at 10 ms a query, a 95 ms SLO, measured at twice the profile (20 ms a query):
    # 4 queued drain in 80 ms and the query's own run takes 20 ms, not 10: it would answer at 100 ms,
    # late, though the queue and the profiled run (90 ms) fit.
    one = variant("one:ort-fp32:cpu-1t:b1", 0.98, 0.0, 10.0, batch=1)
    workers = {"w1": WorkerLive("w1", "cpu", variants={one.variant_id: 1})}

    def decide(queue_len: int, batch_ms: float = 20.0):
        live = {one.variant_id: VariantLive(ACTIVE, replicas=1, workers=("w1",), queue_len=queue_len,
                                            batch_ms=batch_ms)}
        return select(Snapshot(variants={one.variant_id: one}, live=live, workers=workers, at_ms=1),
                      Request("demo", task="digits", latency_ms=95.0))

    assert decide(4).status == NO_FEASIBLE_VARIANT
    assert decide(3).status == OK and decide(3).estimated_ms == pytest.approx(80.0)
    assert decide(4, batch_ms=10.0).status == OK  # at the profiled speed: 50 ms
    assert decide(0, batch_ms=1000.0).status == OK  # an empty queue is always admitted: it keeps being measured


def test_a_queued_variant_admits_only_what_its_measured_overrun_leaves_within_the_slo():
    # A batch-1 variant at 10 ms a query and a 100 ms SLO, 4 queued: the estimate is 50 ms. Its recent
    # answers came up to 60 ms later than estimated: 50 + 60 > 100, so the query is shed at once,
    # not answered late or shed after its deadline by the worker.
    one = variant("one:ort-fp32:cpu-1t:b1", 0.98, 0.0, 10.0, batch=1)
    workers = {"w1": WorkerLive("w1", "cpu", variants={one.variant_id: 1})}

    def decide(queue_len: int, overrun_ms: float):
        live = {one.variant_id: VariantLive(ACTIVE, replicas=1, workers=("w1",), queue_len=queue_len,
                                            overrun_ms=overrun_ms)}
        return select(Snapshot(variants={one.variant_id: one}, live=live, workers=workers, at_ms=1),
                      Request("demo", task="digits", latency_ms=100.0))

    assert decide(4, 0.0).status == OK
    assert decide(4, 60.0).status == NO_FEASIBLE_VARIANT
    # Within the margin: admitted, and the estimate the replicas check themselves against is the bare one.
    assert decide(4, 40.0).status == OK and decide(4, 40.0).estimated_ms == pytest.approx(50.0)
    assert decide(0, 1000.0).status == OK  # an empty queue is always admitted: it keeps being measured


def test_a_worker_reports_how_much_later_than_estimated_its_answers_came():
    from infaas.consumers.reporting import VariantMetrics
    metrics = VariantMetrics()
    overruns = [float(ms) for ms in range(-50, 50)]
    metrics.record([], errors=0, missed=0, rows=1, batches=1, exec_ms=1.0, overruns=overruns[:60])
    metrics.record([], errors=0, missed=1, rows=0, batches=0, exec_ms=0.0, overruns=overruns[60:])
    assert metrics.take()["overrun_ms"] == pytest.approx(44.05)  # the 95th percentile of -50..49
    metrics.record([], errors=0, missed=0, rows=2, batches=2, exec_ms=1.0, overruns=[-30.0, -10.0])
    assert metrics.take()["overrun_ms"] == 0.0  # earlier than estimated: no margin
    assert metrics.take()["overrun_ms"] == 0.0  # nothing answered


def test_the_dispatchers_view_takes_the_largest_overrun_its_workers_report(base_settings, monkeypatch):
    view, clock = view_of_large(base_settings, monkeypatch, ["w1", "w2"])
    now = clock["ms"]

    def report(worker_id: str, served: int, overrun_ms: float) -> bytes:
        record = worker_report(now, queue_len=8)
        record["worker_id"] = worker_id
        record["variants"][0].update(served=served, overrun_ms=overrun_ms)
        return CODEC.encode("WorkerReport", record)

    view._apply(base_settings.topic("metrics"), report("w1", 10, 25.0))
    view._apply(base_settings.topic("metrics"), report("w2", 10, 40.0))
    view._rebuild()
    assert view.snapshot.live_of(LARGE.variant_id).overrun_ms == pytest.approx(40.0)
    view._apply(base_settings.topic("metrics"), report("w2", 0, 0.0))  # answered nothing: keeps its last measure
    view._rebuild()
    assert view.snapshot.live_of(LARGE.variant_id).overrun_ms == pytest.approx(40.0)
    view._apply(base_settings.topic("metrics"), report("w2", 10, 5.0))
    view._rebuild()
    assert view.snapshot.live_of(LARGE.variant_id).overrun_ms == pytest.approx(25.0)


def test_the_overrun_counts_only_queries_routed_once_the_replica_served():
    from infaas.consumers.admission import estimate_overrun_ms
    routed = {"dispatched_at": 1_000, "estimated_ms": 40.0}
    assert estimate_overrun_ms(routed, 1_100.0, serving_since=900.0) == 60.0  # 100 ms taken, 40 estimated
    assert estimate_overrun_ms(routed, 1_010.0, serving_since=900.0) == -30.0  # earlier than estimated
    # Routed while the replica was still starting: it waited for the start, not for a queue.
    assert estimate_overrun_ms(routed, 1_900.0, serving_since=1_500.0) is None
    assert estimate_overrun_ms(routed, 1_900.0, serving_since=None) is None


def test_the_view_forgets_a_worker_silent_for_ten_minutes_and_learns_it_again(base_settings, monkeypatch):
    """An autoscaled deployment runs ever new workers: what the view keeps about each must not outlive it."""
    view, clock = view_of_large(base_settings, monkeypatch, ["w1"])
    report = worker_report(clock["ms"], queue_len=4)
    report["variants"][0].update(exec_ms=6.0, service_ms=18.0, avg_batch=1.0, served=5, overrun_ms=12.0)
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", report))
    view._rebuild()
    kept = lambda: ["w1" in table for table in (view._workers, view._queues, view._speeds, view._overruns)]  # noqa: E731
    assert kept() == [True] * 4
    clock["ms"] += views.FORGET_WORKER_MS - 1_000  # long expired from snapshots, not yet forgotten
    view._rebuild()
    assert "w1" not in view.snapshot.workers and kept() == [True] * 4
    clock["ms"] += 2_000
    view._rebuild()
    assert kept() == [False] * 4
    report["reported_at"] = clock["ms"]
    view._apply(base_settings.topic("metrics"), CODEC.encode("WorkerReport", report))
    view._rebuild()
    assert "w1" in view.snapshot.workers and kept() == [True] * 4
