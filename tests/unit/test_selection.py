"""The INFaaS selection policy on hand-built snapshots."""

from dataclasses import replace

import pytest

from infaas.catalog import Variant
from infaas.policies.selection import (
    NO_FEASIBLE_VARIANT,
    OK,
    UNKNOWN_MODEL,
    Request,
    drained_queue,
    estimated_queue,
    select,
)
from infaas.policies.snapshot import ACTIVE, INTERFERED, OVERLOADED, Snapshot, VariantLive, WorkerLive


def variant(vid: str, accuracy: float, slope: float, intercept: float, batch: int = 8, cost: float = 0.01,
            load_ms: float = 100.0, hardware: str = "cpu", model: str | None = None, app: str = "demo",
            public: bool = True, task: str = "digits") -> Variant:
    return Variant(task=task, variant_id=vid, model=model or vid.split(":")[0], model_version=1, app_id=app,
                   public=public, optimizer="ort-fp32", hardware=hardware, threads=1, batch_size=batch,
                   artifact="", artifact_bytes=0, accuracy=accuracy, load_ms=load_ms,
                   latency_p50_ms=slope * batch + intercept, latency_p99_ms=0.0, slope_ms=slope,
                   intercept_ms=intercept, throughput_qps=0.0, peak_memory_mb=10.0, cost_per_1k=cost)


SMALL = variant("small:ort-fp32:cpu-1t:b8", 0.90, 0.05, 0.2, cost=0.001, load_ms=50)
LARGE = variant("large:ort-fp32:cpu-1t:b8", 0.98, 1.0, 5.0, cost=0.02, load_ms=400)
MEDIUM = variant("medium:ort-fp32:cpu-1t:b8", 0.95, 0.3, 1.0, cost=0.005, load_ms=200)
CATALOG = {v.variant_id: v for v in (SMALL, MEDIUM, LARGE)}
WORKERS = {"w1": WorkerLive("w1", "cpu", cpu_util=0.7), "w2": WorkerLive("w2", "cpu", cpu_util=0.1)}


def snapshot(live=None, variants=CATALOG):
    return Snapshot(variants=variants, live=live or {}, workers=WORKERS, at_ms=1)


def test_strict_accuracy_gets_an_accurate_enough_variant():
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.97))
    assert decision.status == OK and decision.variant_id == LARGE.variant_id
    assert CATALOG[decision.variant_id].accuracy >= 0.97


def test_tight_latency_gets_a_faster_variant():
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.9, latency_ms=1.0))
    assert decision.variant_id == SMALL.variant_id
    assert SMALL.latency_at(1) <= 1.0


def test_inactive_choice_minimizes_load_plus_latency_and_names_the_least_utilized_worker():
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.93))
    assert decision.variant_id == MEDIUM.variant_id  # 200 + 1.3 ms beats 400 + 6 ms
    assert decision.load_on == "w2"
    assert decision.estimated_ms == pytest.approx(MEDIUM.load_ms + MEDIUM.latency_at(1))


def test_active_variant_preferred_at_least_cost():
    live = {LARGE.variant_id: VariantLive(ACTIVE, 1), MEDIUM.variant_id: VariantLive(ACTIVE, 1)}
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.94))
    assert decision.variant_id == MEDIUM.variant_id and decision.load_on is None  # cheaper of the two active


def test_queueing_counts_in_the_estimate():
    # MEDIUM active but with a long queue (170 ms of batches): it misses the SLO, so the inactive SMALL,
    # which loads and answers within it (50.6 ms), is chosen.
    live = {MEDIUM.variant_id: VariantLive(ACTIVE, replicas=1, queue_len=400)}
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.9, latency_ms=60))
    assert decision.variant_id == SMALL.variant_id


def test_no_cold_variant_whose_load_exceeds_the_slack():
    # With a 20 ms SLO SMALL's 50 ms load is too slow, and the loaded MEDIUM is late behind its queue:
    # the query is answered at once (shed), not routed to miss its deadline.
    live = {MEDIUM.variant_id: VariantLive(ACTIVE, replicas=1, queue_len=400)}
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.9, latency_ms=20))
    assert decision.status == NO_FEASIBLE_VARIANT and decision.load_on is None
    # Nothing loaded meets the accuracy: the cold variant is loaded anyway (the task needs one).
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.9, latency_ms=20))
    assert decision.variant_id == SMALL.variant_id and decision.load_on == "w2"


def test_a_queue_estimate_adds_what_was_routed_and_drains_at_full_batches():
    # LARGE runs a batch of 8 in 13 ms: one replica drains 8 queries every 13 ms.
    assert estimated_queue(LARGE, 1, reported=40, routed_since=10, elapsed_ms=0) == 50
    assert estimated_queue(LARGE, 1, reported=40, routed_since=10, elapsed_ms=26) == 34
    assert estimated_queue(LARGE, 2, reported=40, routed_since=10, elapsed_ms=13) == 34
    assert estimated_queue(LARGE, 1, reported=40, routed_since=10, elapsed_ms=10_000) == 0
    assert estimated_queue(replace(LARGE, slope_ms=0.0, intercept_ms=0.0), 1, 5, 5, 1.0) == 0  # instant: empty


def test_interfered_variants_get_queries_only_when_nothing_else_answers():
    live = {SMALL.variant_id: VariantLive(INTERFERED, 1)}
    assert select(snapshot(live), Request("demo", task="digits")).variant_id != SMALL.variant_id
    # LARGE is the only variant accurate enough, measured 4x slower than its profile (13 ms a batch of 8).
    live = {LARGE.variant_id: VariantLive(INTERFERED, 1, batch_ms=52.0)}
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.97, latency_ms=100.0))
    assert decision.status == OK and decision.variant_id == LARGE.variant_id and "interfered" in decision.reason
    assert decision.estimated_ms == pytest.approx(4 * LARGE.latency_at(1))  # its own run, at the measured speed
    # 20 ms meets the profile (6 ms) but not the measured speed (24 ms): refused, not sent to be late.
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.97, latency_ms=20.0))
    assert decision.status == NO_FEASIBLE_VARIANT


def test_overloaded_is_the_last_resort():
    live = {LARGE.variant_id: VariantLive(OVERLOADED, 1)}
    decision = select(snapshot(live), Request("demo", task="digits", min_accuracy=0.97))
    assert decision.status == OK and decision.variant_id == LARGE.variant_id and "overloaded" in decision.reason
    live = {SMALL.variant_id: VariantLive(OVERLOADED, 1)}
    assert select(snapshot(live), Request("demo", task="digits")).variant_id != SMALL.variant_id


def test_impossible_pair_reports_what_was_possible():
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.97, latency_ms=2.0))
    assert decision.status == NO_FEASIBLE_VARIANT
    assert decision.best_accuracy_within_slo == pytest.approx(0.95)  # MEDIUM: 1.3 ms
    assert decision.fastest_latency_ms == pytest.approx(LARGE.latency_at(1))
    assert "best accuracy within 2 ms is 0.9500" in decision.reason


def test_batch_and_cost_filters():
    assert select(snapshot(), Request("demo", task="digits", batch=9)).status == NO_FEASIBLE_VARIANT
    decision = select(snapshot(), Request("demo", task="digits", min_accuracy=0.94, max_cost=0.01))
    assert decision.variant_id == MEDIUM.variant_id  # LARGE costs 0.02


def test_private_models_are_invisible_to_other_apps():
    secret = variant("secret:ort-fp32:cpu-1t:b8", 0.99, 0.01, 0.1, app="other", public=False)
    catalog = {**CATALOG, secret.variant_id: secret}
    assert select(snapshot(variants=catalog), Request("demo", task="digits", min_accuracy=0.985)).status \
        == NO_FEASIBLE_VARIANT
    assert select(snapshot(variants=catalog), Request("other", task="digits", min_accuracy=0.985)).variant_id \
        == secret.variant_id
    unknown = select(snapshot(variants=catalog), Request("demo", model="secret"))
    assert unknown.status == UNKNOWN_MODEL and "secret" in unknown.reason


def test_model_specific_and_variant_specific_requests():
    other = replace(SMALL, variant_id="small:ort-int8:cpu-1t:b8", optimizer="ort-int8", cost_per_1k=0.0005)
    catalog = {**CATALOG, other.variant_id: other}
    decision = select(snapshot(variants=catalog), Request("demo", model="small"))
    assert decision.variant_id in (SMALL.variant_id, other.variant_id)
    assert select(snapshot(), Request("demo", variant=LARGE.variant_id)).variant_id == LARGE.variant_id
    assert select(snapshot(), Request("demo", variant="nope:x:cpu-1t:b1")).status == UNKNOWN_MODEL
    assert select(snapshot(), Request("demo", task="unknown-task")).status == UNKNOWN_MODEL


def test_variants_are_priced_on_the_class_slo_and_timed_on_what_is_left():
    """A query read late has less time left than its class's SLO: the candidates are priced on the
    class's SLO (one cached price array per class, as the scaler provisions), while whether this
    query is answered in time is judged on what is left."""
    request = Request("demo", task="digits", min_accuracy=0.9, latency_ms=40.0, class_slo_ms=50.0)
    index_of = lambda: next(v for k, v in snap._memo.items() if k[0] == "static")  # noqa: E731
    snap = snapshot()
    assert select(snap, request).status == OK
    assert ("slo cost", 50.0) in index_of()._latency and ("slo cost", 40.0) not in index_of()._latency
    late = replace(request, latency_ms=0.1)  # 0.1 ms left: nothing answers in time, whatever the price
    assert select(snap, late).status == NO_FEASIBLE_VARIANT


def test_the_per_slo_price_cache_stays_bounded():
    from infaas.policies.selection import MAX_CACHED
    snap = snapshot()
    for i in range(3 * MAX_CACHED):  # every query with its own SLO, as a client may send
        select(snap, Request("demo", task="digits", latency_ms=100.0 + i * 0.001))
    index = next(v for k, v in snap._memo.items() if k[0] == "static")
    assert len(index._latency) <= MAX_CACHED + 1


def test_replicas_still_loading_do_not_drain_the_queue():
    """At a burst's onset the scaler adds replicas that serve only once their worker is up (20-30 s); counted as
    draining the queue already, the cheaper MEDIUM looked in time and took the class into its queue. Drained by
    the one replica that serves, it is late, and the class goes to the loaded LARGE, which meets its accuracy
    too; once the replicas serve, back to MEDIUM."""
    request = Request("demo", task="digits", min_accuracy=0.94, latency_ms=20)
    starting = {MEDIUM.variant_id: VariantLive(ACTIVE, replicas=4, loading=3, queue_len=80),
                LARGE.variant_id: VariantLive(ACTIVE, replicas=1)}
    assert select(snapshot(starting), request).variant_id == LARGE.variant_id  # 80 / 8 x 3.4 ms = 34 ms ahead
    serving = {**starting, MEDIUM.variant_id: VariantLive(ACTIVE, replicas=4, queue_len=80)}
    assert select(snapshot(serving), request).variant_id == MEDIUM.variant_id  # 8.5 ms ahead


def test_a_drained_queue_never_goes_below_empty():
    assert drained_queue(LARGE, 1, queue=16.0, elapsed_ms=13.0) == pytest.approx(8.0)
    assert drained_queue(LARGE, 1, queue=16.0, elapsed_ms=1_000.0) == 0.0
