"""The SLO-first rules infaas scales with (PolicyConfig.slo_first), on hand-built snapshots.

Same fixtures as test_policies_scaling.py: CPU_B1 runs a query in 100 ms (thr = 10 rows/s) on a whole
CPU worker; with a 200 ms SLO its target utilization is 1 - 100/200 = 0.5, with 1 s it is 0.85 (capped).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas.policies import decide
from infaas.policies.capacity import (
    noise_headroom_rows,
    recent_peak_rows,
    scale_up_demand,
    target_utilization,
    trend_demand_rows,
)
from infaas.policies.monitoring import variant_is_low
from infaas.policies.scaling import DOWN, UP, policy_config
from infaas.policies.snapshot import PolicyConfig, Snapshot
from tests.unit.test_policies_scaling import (
    AT,
    CATALOG,
    CPU_B1,
    GPU_B8,
    kinds,
    live,
    snapshot,
    variant,
    worker,
)

# The pool and the noise headroom: their own tests.
CONFIG = PolicyConfig(max_workers=20, scale_up_windows=1, warm_pool_max=0, noise_headroom_sigmas=0.0)
POOL = replace(CONFIG, warm_pool_max=20, warm_pool_share=2.0)
VID = CPU_B1.variant_id


def test_target_utilization_comes_from_the_slo_slack():
    assert target_utilization(CPU_B1, CONFIG, 200.0) == pytest.approx(0.5)  # SLO = 2 x the batch
    assert target_utilization(CPU_B1, CONFIG, 400.0) == pytest.approx(0.75)
    assert target_utilization(CPU_B1, CONFIG, 10_000.0) == pytest.approx(0.85)  # capped
    # INFaaS's load-latency headroom (the baselines'): 1 - 0.0002 x 1000 ms, whatever the SLO.
    assert target_utilization(CPU_B1, replace(CONFIG, slo_first=False), 200.0) == pytest.approx(0.8)
    assert policy_config(CONFIG, "replica-only").slo_first is False and policy_config(CONFIG, "infaas") is CONFIG


def test_scale_up_keeps_the_slack_a_tight_slo_needs():
    state = {VID: live(1, 12.0, demand_slo_ms=200.0)}
    workers = [worker("w1", util=1.0, hosts={VID: 1})] + [worker(f"w{i}") for i in (2, 3, 4)]
    # 12 rows/s at 0.5 x 10 rows/s per replica: 3 replicas, +2 (INFaaS's 0.8 would add 1).
    assert kinds(decide(snapshot(state, workers), CONFIG)) == ["ADD_REPLICA"] * 2
    assert kinds(decide(snapshot(state, workers), replace(CONFIG, slo_first=False))) == ["ADD_REPLICA"]


def test_scale_up_follows_a_rising_arrival_rate():
    rising = {VID: live(2, 10.0, demand_slo_ms=1000.0, workers=("w1", "w2"))}
    workers = [worker("w1", util=0.6, hosts={VID: 1}), worker("w2", util=0.6, hosts={VID: 1}), worker("w3")]
    demand = {VID: (2.0, 4.0, 6.0, 8.0)}
    # 10 rows/s fit 2 x 8.5; the trend (+2/s) reaches 20 rows/s 5 s ahead: one more replica now.
    assert trend_demand_rows(rising[VID], demand[VID], CONFIG) == pytest.approx(20.0)
    assert kinds(decide(snapshot(rising, workers, demand), CONFIG)) == ["ADD_REPLICA"]
    flat = {VID: (10.0, 10.0, 10.0, 10.0)}
    assert decide(snapshot(rising, workers, flat), CONFIG) == []


def test_noise_on_a_steady_rate_is_no_trend():
    # A steady 100 q/s seen through 1 s windows (Poisson: about +-10): the fitted slope is +1.3/s,
    # which projected 5 s ahead would ask for 106.5 rows/s; its lower confidence bound is below 0.
    steady = live(2, 104.0, demand_slo_ms=1000.0)
    assert trend_demand_rows(steady, (93.0, 108.0, 96.0, 99.0), CONFIG) == pytest.approx(104.0)
    # The same rise without the scatter is a trend.
    assert trend_demand_rows(steady, (94.0, 96.5, 99.0, 101.5), CONFIG) > 110.0


def _low(low_for_s: float, demand: tuple[float, ...] = (5.0,) * 59, **kw):
    state = {VID: live(3, 5.0, workers=("w1", "w2", "w3"), low_since_ms=int(AT - low_for_s * 1000),
                       demand_slo_ms=1000.0, **kw)}
    workers = [worker(f"w{i}", util=0.2 + i / 10, hosts={VID: 1}) for i in (1, 2, 3)]
    return snapshot(state, workers, {VID: demand})


def test_scale_down_waits_a_minute_low_and_judges_a_minute_of_peaks():
    assert decide(_low(30), CONFIG) == []  # INFaaS would remove after the 1 s load latency
    assert kinds(decide(_low(30), replace(CONFIG, slo_first=False))) == ["REMOVE_REPLICA"]
    actions = decide(_low(60), CONFIG)
    assert kinds(actions) == ["REMOVE_REPLICA"] and (actions[0].from_count, actions[0].to_count) == (3, 2)
    # 20 rows/s for 5 s, 50 s ago, still needs the 3 replicas (0.85 x 10 rows/s each).
    assert decide(_low(60, demand=(20.0,) * 5 + (5.0,) * 54), CONFIG) == []


def test_one_action_at_a_time_per_variant():
    assert decide(_low(60, loading=1), CONFIG) == []  # an addition still loading: its effect is not seen yet


def test_queries_that_named_a_variant_are_never_moved_by_vertical_scaling():
    state = {VID: live(3, 120.0, workers=("w1", "w2", "w3"), demand_accuracy=0.75, demand_slo_ms=200.0)}
    workers = [worker(f"w{i}", util=0.75, hosts={VID: 1}) for i in (1, 2, 3)] + [worker("g1", "gpu-t4")]
    moved = decide(snapshot(state, workers), CONFIG)
    assert kinds(moved)[0] == "UPGRADE_VARIANT" and moved[0].target_variant_id == GPU_B8.variant_id
    named = {VID: replace(state[VID], named=True)}
    actions = decide(snapshot(named, workers), CONFIG)
    assert "UPGRADE_VARIANT" not in kinds(actions) and "ADD_REPLICA" in kinds(actions)


def _varying(idle: int, demand: tuple[float, ...], low_for_s: float = 120.0):
    state = {VID: live(4, 20.0, workers=("w1", "w2", "w3", "w4"), demand_slo_ms=200.0)}
    busy = [worker(f"w{i}", util=0.7, hosts={VID: 1}) for i in (1, 2, 3, 4)]
    idle_workers = [worker(f"i{i}", low_since_ms=int(AT - low_for_s * 1000)) for i in range(idle)]
    return snapshot(state, busy + idle_workers, {VID: demand})


def test_a_warm_pool_sized_from_the_recent_variability():
    # 0 and 20 rows/s in turn: 0 and 4 workers' worth (5 rows/s each at 0.5), std 2: 3 sigmas = 6 idle workers.
    swinging = (0.0, 20.0) * 29 + (0.0,)
    actions = decide(_varying(0, swinging), POOL)
    assert kinds(actions) == ["ADD_WORKER"] and (actions[0].from_count, actions[0].to_count) == (4, 10)
    assert "warm pool of 6" in actions[0].reason
    assert decide(_varying(6, swinging), POOL) == []  # the pool is there: kept, not removed
    removed = decide(_varying(8, swinging), POOL)
    assert kinds(removed) == ["REMOVE_WORKER"] * 2
    capped = decide(_varying(0, swinging), replace(POOL, warm_pool_share=0.5))
    assert "warm pool of 2" in capped[0].reason  # half the 4 workers in use
    steady = (20.0,) * 59
    assert kinds(decide(_varying(2, steady), POOL)) == ["REMOVE_WORKER"] * 2  # no variability: no pool


def test_worker_back_off_is_per_kind_and_direction():
    low = AT - 60_000  # empty and low for a minute: removable
    spare = snapshot({}, [worker("w1"), worker("w2", low_since_ms=low), worker("w3", low_since_ms=low)])
    assert kinds(decide(spare, CONFIG, last_worker_action_ms={("cpu", UP): AT - 1000, ("gpu-t4", DOWN): AT - 1000})) \
        == ["REMOVE_WORKER"] * 2
    assert decide(spare, CONFIG, last_worker_action_ms={("cpu", DOWN): AT - 1000}) == []
    # Replicas that found no room (a lost worker's among them) get their workers without waiting.
    recovering = snapshot({VID: live(2, 10.0, unplaced=1, demand_slo_ms=1000.0, workers=("w1",))},
                          [worker("w1", util=0.9, hosts={VID: 1}), worker("w2", util=0.9, hosts={VID: 1})])
    actions = decide(recovering, CONFIG, last_worker_action_ms={("cpu", UP): AT - 1000})
    assert kinds(actions)[-1] == "ADD_WORKER" and "found no room" in actions[-1].reason


def test_a_hot_kind_gets_no_worker_that_no_replica_needs():
    """INFaaS's VM autoscaler adds a worker when all of a kind run above 80%; SLO-first, only replicas
    that found no room (or the warm pool) start one: a lone GPU reads hot whenever a query waits, and the
    empty GPU that started each time was billed, then removed."""
    hosted = {GPU_B8.variant_id: live(1, 2.0, workers=("g1",), demand_slo_ms=1000.0)}
    busy = snapshot(hosted, [worker("g1", hardware="gpu-t4", util=0.95, hosts={GPU_B8.variant_id: 1})],
                    {GPU_B8.variant_id: (2.0,) * 59})
    assert "ADD_WORKER" not in kinds(decide(busy, CONFIG))
    infaas_rule = [a for a in decide(busy, replace(CONFIG, slo_first=False))
                   if a.kind == "ADD_WORKER" and a.hardware == "gpu-t4"]
    assert len(infaas_rule) == 1 and "above 80%" in infaas_rule[0].reason


def test_only_empty_workers_leave():
    low = AT - 60_000
    state = {VID: live(2, 4.0, workers=("w1", "w2"), demand_slo_ms=1000.0)}
    workers = [worker("w1", util=0.1, hosts={VID: 1}, low_since_ms=low), worker("w2", util=0.05, hosts={VID: 1},
                                                                               low_since_ms=low)]
    assert "REMOVE_WORKER" not in kinds(decide(snapshot(state, workers, {VID: (4.0,) * 59}), CONFIG))
    assert set(CATALOG) >= {VID}


def test_an_upgrade_keeps_the_strictest_accuracy_of_the_window_not_the_last_report_s():
    """The last second's queries wanted 0.6, the window's strictest 0.75: the upgrade goes to a variant that
    meets 0.75 (flat, seed 0: an upgrade of yolov5x judged on one report moved the strictest class's traffic to
    yolov5l, below its demand; the class had no variant and its queries waited for yolov5x to load again)."""
    less_accurate = variant("mobilenet:trt:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=2.0, intercept=0.0,
                            load_ms=2000.0, accuracy=0.70)
    catalog = {v.variant_id: v for v in (CPU_B1, GPU_B8, less_accurate)}
    state = {CPU_B1.variant_id: live(3, 120.0, workers=("w1", "w2", "w3"), demand_accuracy=0.6, demand_slo_ms=200.0,
                                     window_accuracy=0.75, window_slo_ms=200.0, loaded_at_ms=1)}
    workers = [worker(f"w{i}", util=0.75, hosts={CPU_B1.variant_id: 1}) for i in (1, 2, 3)] + [worker("g1", "gpu-t4")]
    snap = Snapshot(catalog, state, {w.worker_id: w for w in workers}, 600_000, {})
    moves = [a for a in decide(snap, CONFIG) if a.kind == "UPGRADE_VARIANT"]
    assert [a.target_variant_id for a in moves] == [GPU_B8.variant_id]


def test_the_warm_pool_is_kept_for_cpu_workers_only():
    """The same swinging demand on a GPU variant keeps no idle GPU (an idle GPU costs 17-48x an idle CPU worker);
    on the CPU variant it keeps the pool (`test_a_warm_pool_sized_from_the_recent_variability`)."""
    swinging = (0.0, 20.0) * 29 + (0.0,)
    gpu = GPU_B8.variant_id
    state = {gpu: live(2, 200.0, workers=("g1", "g2"), demand_slo_ms=200.0)}
    busy = [worker(f"g{i}", "gpu-t4", util=0.7, hosts={gpu: 1}) for i in (1, 2)]
    actions = decide(snapshot(state, busy, {gpu: tuple(x * 10 for x in swinging)}), POOL)
    assert "ADD_WORKER" not in kinds(actions)
    with_gpu_pool = replace(POOL, warm_pool_kinds=("cpu", "gpu-t4"))
    actions = decide(snapshot(state, busy, {gpu: tuple(x * 10 for x in swinging)}), with_gpu_pool)
    assert [a.hardware for a in actions if a.kind == "ADD_WORKER"] == ["gpu-t4"]
    assert kinds(decide(_varying(0, swinging), POOL)) == ["ADD_WORKER"]


def test_replicas_carry_the_rate_plus_its_noise_in_scale_up_and_scale_down_alike():
    config = replace(CONFIG, noise_headroom_sigmas=1.0)
    assert noise_headroom_rows(100.0, 1.0, config) == pytest.approx(10.0)  # one sigma of 100 q/s over 1 s
    assert noise_headroom_rows(100.0, 1.0, replace(config, slo_first=False)) == 0.0  # not INFaaS's rule
    steady = live(13, 100.0, demand_slo_ms=1000.0)
    assert scale_up_demand(steady, (100.0,) * 4, config) == pytest.approx(110.0)
    # 110 rows/s need 13 replicas of 10 rows/s at 0.85; the 100 alone, 12. Scale-down counts the same
    # headroom, so the 13th is not removed (it would be added back at the next tick).
    assert not variant_is_low(CPU_B1, steady, config, (100.0,) * 59)
    assert variant_is_low(CPU_B1, steady, CONFIG, (100.0,) * 59)


def test_scale_down_judges_the_peak_of_a_few_seconds_not_one_seconds_noise():
    smoothed = replace(CONFIG, peak_smooth_windows=5)
    # One second at 20 q/s 9 s ago, 5 q/s otherwise: a Poisson spike, whose 5 s mean (8) fits 1 replica of
    # 10 rows/s at 0.85; taken alone (a peak of single seconds) it held all 3 replicas.
    spike = (5.0,) * 50 + (20.0,) + (5.0,) * 8
    assert kinds(decide(_low(60, demand=spike), smoothed)) == ["REMOVE_REPLICA"]
    assert decide(_low(60, demand=spike), replace(smoothed, peak_smooth_windows=1)) == []
    # INFaaS's rule (the baselines') keeps its peak of single seconds.
    assert recent_peak_rows(live(3, 5.0), spike, replace(smoothed, slo_first=False)) == pytest.approx(20.0)
    assert recent_peak_rows(live(3, 5.0), spike, smoothed) == pytest.approx(8.0)
