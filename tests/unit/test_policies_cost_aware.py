"""Cost-aware selection and DOWNGRADE (issue 13): a class that must go to a cold variant gets the cheapest
that meets its accuracy and its SLO under load, and the scaler moves settled traffic down to a cheaper way
of serving it, with hysteresis. Fixtures as in test_policies_scaling.py (prices from the hardware catalogue:
a CPU worker $0.085/h, a gpu-t4 worker $0.526/h)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas.policies import Request, decide, select
from infaas.policies.monitoring import track
from infaas.policies.selection import slo_cost
from infaas.policies.snapshot import ACTIVE, PolicyConfig, Snapshot, VariantLive, WorkerLive
from tests.unit.test_policies_scaling import AT, kinds, live, variant, worker

CONFIG = PolicyConfig(max_workers=20, scale_up_windows=1, warm_pool_max=0)
# Same model, two hardware kinds: the GPU answers in 25 ms, the CPU in 100 ms; with a 300 ms SLO a row
# costs $0.526/h / (40 rows/s x 0.85) on the GPU, $0.085/h / (10 rows/s x 0.67) on the CPU: 1.2x less.
GPU = variant("resnet:ort:gpu-t4:b1", hardware="gpu-t4", intercept=25.0, load_ms=40.0)
CPU = variant("resnet:ort:cpu-2t:b1", intercept=100.0, load_ms=40.0)
# A smaller, less accurate model on CPU, 5x cheaper per row than CPU.
SMALL = variant("resnet18:ort:cpu-2t:b1", intercept=20.0, accuracy=0.70, load_ms=40.0)
# A more accurate model on the GPU, 30 ms a query.
BIG_GPU = variant("resnet50:ort:gpu-t4:b1", hardware="gpu-t4", intercept=30.0, accuracy=0.80, load_ms=40.0)
CATALOG = {v.variant_id: v for v in (GPU, CPU, SMALL, BIG_GPU)}
BOTH_READY = {"w1": WorkerLive("w1", "cpu"), "g1": WorkerLive("g1", "gpu-t4")}


def test_slo_cost_prices_the_batch_the_slo_allows_at_the_planned_utilization():
    big_batch = variant("resnet:ort:cpu-2t:b8", batch=8, slope=50.0, intercept=20.0)  # 420 ms per batch of 8
    loose, _ = slo_cost(big_batch, 10_000.0)  # full batches: 52.5 ms a row, planned at 0.85
    tight, fits = slo_cost(big_batch, 200.0)  # batches of 1 (2 x 70 ms <= 200): 70 ms a row, at 1 - 70/200
    assert fits and tight == pytest.approx(loose * (70.0 / 0.65) / (420.0 / 8 / 0.85))
    assert loose == pytest.approx(big_batch.cost_per_1k / 0.85)  # no SLO to speak of: the profile's cost
    assert slo_cost(big_batch, 120.0)[1] is False  # 2 x 70 ms > 120 ms: misses the SLO under load


def test_a_cold_class_gets_the_cheapest_variant_that_meets_it_not_the_fastest():
    request = Request("demo", task="vision", min_accuracy=0.75, latency_ms=300.0)
    decision = select(Snapshot(CATALOG, workers=BOTH_READY, at_ms=1), request)
    assert decision.variant_id == CPU.variant_id  # 1.2x cheaper per row; the GPU is 4x faster
    # An SLO the CPU meets only when idle (100 ms of 150; a queued batch makes 200): the GPU.
    tight = replace(request, latency_ms=150.0)
    assert select(Snapshot(CATALOG, workers=BOTH_READY, at_ms=1), tight).variant_id == GPU.variant_id
    # A class that takes any accuracy: the small model, cheaper still.
    loose = replace(request, min_accuracy=0.0)
    assert select(Snapshot(CATALOG, workers=BOTH_READY, at_ms=1), loose).variant_id == SMALL.variant_id


def test_an_active_variant_that_meets_the_slo_only_when_idle_is_passed_over_for_one_that_meets_it_under_load():
    request = Request("demo", task="vision", min_accuracy=0.75, latency_ms=150.0)
    lives = {CPU.variant_id: VariantLive(ACTIVE, 1, workers=("w1",))}
    decision = select(Snapshot(CATALOG, live=lives, workers=BOTH_READY, at_ms=1), request)
    assert decision.variant_id == GPU.variant_id and decision.load_on == "g1"
    # Nothing else loadable (no GPU in the catalogue): the active CPU variant, as before.
    cpu_only = {CPU.variant_id: CPU, SMALL.variant_id: SMALL}
    decision = select(Snapshot(cpu_only, live=lives, workers=BOTH_READY, at_ms=1), request)
    assert decision.variant_id == CPU.variant_id


def _settled(lives: dict, workers: list[WorkerLive], demand: dict, loaded_for_s: float = 120.0) -> Snapshot:
    lives = {vid: replace(state, loaded_at_ms=int(AT - loaded_for_s * 1000)) for vid, state in lives.items()}
    return Snapshot(CATALOG, lives, {w.worker_id: w for w in workers}, AT, demand)


def _on_gpu(qps: float, peak: float | None = None, loaded_for_s: float = 120.0, **kw) -> Snapshot:
    state = {GPU.variant_id: live(1, qps, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=300.0, **kw)}
    workers = [worker("g1", "gpu-t4", util=0.1, hosts={GPU.variant_id: 1}), worker("w1"), worker("w2")]
    history = (peak if peak is not None else qps,) * 5 + (qps,) * 54  # a peak of 5 s: load, not noise
    return _settled(state, workers, {GPU.variant_id: history}, loaded_for_s)


def test_downgrade_to_a_cheaper_variant_once_the_load_has_fallen_for_the_peak_window():
    # 5 rows/s for a minute: one GPU replica ($0.526/h) or one CPU replica ($0.085/h, 10 rows/s at 0.67):
    # staying costs 6x moving. Not judged on the level: the load must have been low the whole window.
    actions = decide(_on_gpu(5.0), CONFIG)
    assert kinds(actions) == ["DOWNGRADE_VARIANT"] and actions[0].target_variant_id == CPU.variant_id
    assert actions[0].worker_id in ("w1", "w2")
    # 60 rows/s 58 s ago: 9 CPU replicas ($0.77/h) against 2 GPU replicas ($1.05/h): not 1.5x, no move.
    assert "DOWNGRADE_VARIANT" not in kinds(decide(_on_gpu(5.0, peak=60.0), CONFIG))


def test_downgrade_keeps_the_strictest_accuracy_of_the_window_not_of_the_last_second():
    # The last second's queries took any accuracy, but 30 s ago one wanted 0.75: the small model is out.
    fresh = _on_gpu(5.0)
    before = fresh.with_changes(live={GPU.variant_id: replace(fresh.live[GPU.variant_id], demand_accuracy=0.75)},
                                at_ms=AT - 30_000)
    before = track(None, before, CONFIG)
    now = track(before, fresh.with_changes(live={GPU.variant_id: replace(fresh.live[GPU.variant_id],
                                                                              demand_accuracy=0.1)}), CONFIG)
    assert now.live[GPU.variant_id].strictest_accuracy == pytest.approx(0.75)
    actions = [a for a in decide(now, CONFIG) if a.kind == "DOWNGRADE_VARIANT"]
    assert len(actions) == 1 and actions[0].target_variant_id == CPU.variant_id
    # A window later with only undemanding queries: the small model.
    later = track(now, now.with_changes(at_ms=AT + 61_000), CONFIG)
    assert later.live[GPU.variant_id].strictest_accuracy == pytest.approx(0.1)
    assert decide(later, CONFIG)[0].target_variant_id == SMALL.variant_id


def test_no_downgrade_before_the_hold_nor_while_scaling_up_nor_for_named_traffic():
    assert decide(_on_gpu(5.0, loaded_for_s=30.0), CONFIG) == []  # just loaded (an upgrade's target, say)
    # Rising: 5 rows/s after 1, 2, 3, 4: the trend asks for more, the downgrade waits.
    rising = _on_gpu(5.0)
    rising = rising.with_changes(demand={GPU.variant_id: (1.0, 2.0, 3.0, 4.0)})
    assert "DOWNGRADE_VARIANT" not in kinds(decide(rising, replace(CONFIG, target_util_max=0.06)))
    named = _on_gpu(5.0, named=True)
    assert decide(named, CONFIG) == []


def test_no_flapping_the_upgrade_back_needs_the_load_to_grow_past_the_ratio():
    # After moving to the CPU at 5 rows/s, 8 rows/s (a second CPU replica, $0.17/h against the GPU's
    # $0.526/h) neither upgrades (not 1.5x dearer) nor downgrades (the CPU is the cheapest).
    state = {CPU.variant_id: live(1, 8.0, demand_accuracy=0.75, demand_slo_ms=300.0)}
    workers = [worker("w1", util=0.8, hosts={CPU.variant_id: 1}), worker("w2"), worker("g1", "gpu-t4")]
    snap = _settled(state, workers, {CPU.variant_id: (8.0,) * 59})
    assert "UPGRADE_VARIANT" not in kinds(decide(snap, CONFIG))
    assert "DOWNGRADE_VARIANT" not in kinds(decide(snap, CONFIG))


def _two_on_gpus(big_peak: float, target=BIG_GPU) -> Snapshot:
    """GPU carries 5 rows/s on its own GPU; `target` carries 20 rows/s (peak `big_peak`) on another."""
    lives = {target.variant_id: live(1, 20.0, workers=("g2",), demand_accuracy=0.75, demand_slo_ms=300.0),
             GPU.variant_id: live(1, 5.0, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=300.0)}
    workers = [worker("g1", "gpu-t4", util=0.1, hosts={GPU.variant_id: 1}),
               worker("g2", target.hardware, util=0.5, hosts={target.variant_id: 1})]
    demand = {target.variant_id: (big_peak,) * 5 + (20.0,) * 54, GPU.variant_id: (5.0,) * 59}
    return _settled(lives, workers, demand)


def _moves_of_gpu(snapshot: Snapshot) -> list[tuple[str, str | None]]:
    return [(a.kind, a.target_variant_id) for a in decide(snapshot, CONFIG) if a.variant_id == GPU.variant_id]


def test_merge_a_lightly_used_variant_into_a_loaded_one_with_room_for_both_peaks():
    # BIG_GPU's replica carries 33 rows/s x 0.85 = 28 rows/s: both peaks (25) fit. GPU's traffic takes 18%
    # of that replica ($0.09/h) against a whole GPU of its own ($0.526/h): it moves, one GPU fewer.
    assert _moves_of_gpu(_two_on_gpus(20.0)) == [("DOWNGRADE_VARIANT", BIG_GPU.variant_id)]
    # No room for both peaks (BIG_GPU's was 27 rows/s): no merge; the CPU, 6x cheaper, takes it instead.
    assert _moves_of_gpu(_two_on_gpus(27.0)) == [("DOWNGRADE_VARIANT", CPU.variant_id)]
    # A less accurate loaded variant never takes the traffic.
    assert _moves_of_gpu(_two_on_gpus(20.0, target=SMALL)) == [("DOWNGRADE_VARIANT", CPU.variant_id)]


def test_no_merge_of_a_cheap_cpu_class_onto_a_dearer_gpu():
    # 5 rows/s on one CPU replica ($0.085/h) would take 15% of the GPU replica ($0.077/h): not 1.5x cheaper.
    lives = {GPU.variant_id: live(1, 20.0, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=300.0),
             CPU.variant_id: live(1, 5.0, workers=("w1",), demand_accuracy=0.75, demand_slo_ms=300.0)}
    workers = [worker("g1", "gpu-t4", util=0.2, hosts={GPU.variant_id: 1}),
               worker("w1", util=0.5, hosts={CPU.variant_id: 1})]
    demand = {GPU.variant_id: (20.0,) * 59, CPU.variant_id: (5.0,) * 59}
    assert "DOWNGRADE_VARIANT" not in kinds(decide(_settled(lives, workers, demand), CONFIG))


def test_a_class_on_a_dear_active_variant_prefetches_a_cheaper_one_once_the_active_spend_pays_for_it():
    # BIG_GPU (0.80, $0.526/h a replica) serves a class that takes 0.75: the CPU variant is 1.2x cheaper
    # per row, not enough; SMALL-level classes (any accuracy) get SMALL, ~30x cheaper per row.
    request = Request("demo", task="vision", min_accuracy=0.0, latency_ms=300.0)
    def on_big(replicas: int) -> Snapshot:
        lives = {BIG_GPU.variant_id: VariantLive(ACTIVE, replicas, workers=("g1",))}
        return Snapshot(CATALOG, live=lives, workers=BOTH_READY, at_ms=1)
    decision = select(on_big(1), request)
    # The query stays on the active variant (the load would make it late); SMALL loads on the CPU worker.
    assert decision.variant_id == BIG_GPU.variant_id and (decision.prefetch, decision.prefetch_on) == (
        SMALL.variant_id, "w1")
    # One lightly used CPU replica: nothing saved by a second variant, no prefetch.
    lives = {CPU.variant_id: VariantLive(ACTIVE, 1, workers=("w1",))}
    one_cpu = select(Snapshot(CATALOG, live=lives, workers=BOTH_READY, at_ms=1), request)
    assert one_cpu.variant_id == CPU.variant_id and one_cpu.prefetch is None
    # Ten CPU replicas: moving them would save far more than a SMALL replica.
    lives = {CPU.variant_id: VariantLive(ACTIVE, 10, workers=("w1",))}
    busy_cpu = select(Snapshot(CATALOG, live=lives, workers=BOTH_READY, at_ms=1), request)
    assert busy_cpu.variant_id == CPU.variant_id and busy_cpu.prefetch == SMALL.variant_id
    # A class that needs 0.75: SMALL is out; CPU is not 1.5x cheaper than BIG_GPU per row: no prefetch.
    strict = select(on_big(4), replace(request, min_accuracy=0.75))
    assert strict.variant_id == BIG_GPU.variant_id and strict.prefetch is None


def test_no_prefetch_when_no_worker_has_room_for_it():
    """A prefetch waits for no worker: with the CPU worker's units taken, the class stays on the active
    variant and nothing loads (in the simulator each tick's prefetch had otherwise asked for another batch
    size of the same model, each a whole new worker)."""
    request = Request("demo", task="vision", min_accuracy=0.0, latency_ms=300.0)
    lives = {BIG_GPU.variant_id: VariantLive(ACTIVE, 1, workers=("g1",))}
    full = {"w1": WorkerLive("w1", "cpu", variants={CPU.variant_id: 1}),
            "g1": WorkerLive("g1", "gpu-t4", variants={BIG_GPU.variant_id: 1})}
    decision = select(Snapshot(CATALOG, live=lives, workers=full, at_ms=1), request)
    assert decision.variant_id == BIG_GPU.variant_id and decision.prefetch is None and decision.prefetch_on is None


def test_the_per_slo_columns_stay_bounded_and_correct_under_measured_slos():
    """Demand SLOs are measured floats (each query's remaining budget): memoizing every one grew the
    scaler's memory without bound. Only the newest `PER_SLO_KEPT` are kept, and an evicted SLO is
    computed again to the same columns."""
    from infaas.policies.scaling import PER_SLO_KEPT, TaskArrays
    arrays = TaskArrays.build(list(CATALOG.values()), CONFIG)
    first = [column.copy() for column in arrays.throughput(150.25, 2.0)]
    for i in range(10 * PER_SLO_KEPT):
        arrays.throughput(150.0 + i / 7.0, 2.0)
    assert len(arrays._per_slo) == PER_SLO_KEPT
    again = arrays.throughput(150.25, 2.0)
    for expected, got in zip(first, again, strict=True):
        assert (expected == got).all()
