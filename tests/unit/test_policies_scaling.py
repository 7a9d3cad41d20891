"""The scaling policies (infaas/policies/scaling.py) on hand-built snapshots, one rule at a time.

Numbers used throughout: CPU worker = 2 vCPUs at $0.085/h and CPU variants take both vCPUs, so one
CPU replica fills a worker; a gpu-t4 worker is $0.526/h. CPU_B1 runs a query in 100 ms and loads in
1 s: thr = 10 rows/s and the delta is `demand - 10 r + 0.0002 * 10 r * 1000 = demand - 8 r`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from infaas.catalog import Variant
from infaas.hardware import cost_per_1k
from infaas.policies import POLICIES, Action, decide
from infaas.policies.actions import KINDS
from infaas.policies.baselines import BaselinePlan
from infaas.policies.monitoring import track
from infaas.policies.snapshot import ACTIVE, INTERFERED, PolicyConfig, Snapshot, VariantLive, WorkerLive

# INFaaS's published rules (the baselines'); the SLO-first rules infaas runs: tests/test_policies_slo_first.py.
CONFIG = PolicyConfig(max_workers=10, scale_up_windows=1, slo_first=False)


def variant(vid: str, *, hardware: str = "cpu", batch: int = 1, slope: float = 0.0, intercept: float = 100.0,
            accuracy: float = 0.75, load_ms: float = 1000.0, task: str = "vision", threads: int = 2) -> Variant:
    latency = slope * batch + intercept
    threads = threads if hardware == "cpu" else 1
    return Variant(task=task, variant_id=vid, model=vid.split(":")[0], model_version=1, app_id="demo", public=True,
                   optimizer="ort", hardware=hardware, threads=threads, batch_size=batch, artifact="",
                   artifact_bytes=0, accuracy=accuracy, load_ms=load_ms, latency_p50_ms=latency,
                   latency_p99_ms=latency, slope_ms=slope, intercept_ms=intercept,
                   throughput_qps=batch * 1000.0 / latency, peak_memory_mb=0.0,
                   cost_per_1k=cost_per_1k(hardware, threads, batch, latency))


CPU_B1 = variant("resnet:ort:cpu-2t:b1")
GPU_B8 = variant("resnet:trt:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=5.0, intercept=0.0, load_ms=2000.0)
SMALL_CPU = variant("mobilenet:ort:cpu-2t:b1", intercept=20.0, accuracy=0.70)
CATALOG = {v.variant_id: v for v in (CPU_B1, GPU_B8, SMALL_CPU)}
AT = 600_000  # "now" in every snapshot: ten minutes into the run


def worker(wid: str, hardware: str = "cpu", util: float = 0.0, hosts: dict | None = None, **kw) -> WorkerLive:
    gpu = hardware != "cpu"
    return WorkerLive(wid, hardware, cpu_util=0.0 if gpu else util, gpu_util=util if gpu else 0.0,
                      variants=hosts or {}, **kw)


def live(replicas: int, qps: float, *, history: int | None = None, workers=("w1",), **kw) -> VariantLive:
    return VariantLive(status=kw.pop("status", ACTIVE), replicas=replicas, workers=tuple(workers), qps=qps, **kw)


def snapshot(lives: dict, workers: list[WorkerLive], demand: dict | None = None, at: int = AT) -> Snapshot:
    return Snapshot(CATALOG, lives, {w.worker_id: w for w in workers}, at, demand or {})


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


# ---------------------------------------------------------------- horizontal

def test_scale_up_adds_ceil_delta_over_thr_replicas_on_workers_with_room():
    state = {CPU_B1.variant_id: live(1, 20.0, workers=("w1",))}
    workers = [worker("w1", util=1.0, hosts={CPU_B1.variant_id: 1}), worker("w2"), worker("w3")]
    actions = decide(snapshot(state, workers), CONFIG)
    # delta = 20 - 8 = 12 rows/s -> ceil(12 / 10) = 2 more replicas, one per empty worker.
    assert kinds(actions) == ["ADD_REPLICA", "ADD_REPLICA"]
    assert [(a.from_count, a.to_count) for a in actions] == [(1, 2), (2, 3)]
    assert {a.worker_id for a in actions} == {"w2", "w3"}
    assert all(a.variant_id == CPU_B1.variant_id and "delta 12.0" in a.reason for a in actions)


def test_the_load_latency_term_asks_for_headroom():
    # 9 rows/s fit one 10 rows/s replica, but not with 20% kept for the 1 s it takes to load one.
    state = {CPU_B1.variant_id: live(1, 9.0)}
    actions = decide(snapshot(state, [worker("w1", util=0.9, hosts={CPU_B1.variant_id: 1}), worker("w2")]), CONFIG)
    assert kinds(actions) == ["ADD_REPLICA"]


def test_hold_when_the_replicas_fit_the_demand():
    state = {CPU_B1.variant_id: live(2, 15.0, workers=("w1", "w2"))}
    workers = [worker("w1", util=0.75, hosts={CPU_B1.variant_id: 1}), worker("w2", util=0.75, hosts={CPU_B1.variant_id: 1})]
    assert decide(snapshot(state, workers), CONFIG) == []


def _low_variant(low_since: int) -> Snapshot:
    state = {CPU_B1.variant_id: live(3, 5.0, workers=("w1", "w2", "w3"), low_since_ms=low_since)}
    workers = [worker(f"w{i}", util=0.2 + i / 10, hosts={CPU_B1.variant_id: 1}) for i in (1, 2, 3)]
    return snapshot(state, workers, demand={CPU_B1.variant_id: (5.0, 5.0, 5.0)})


def test_scale_down_waits_for_the_load_latency():
    assert decide(_low_variant(low_since=AT - 500), CONFIG) == []  # low for 0.5 s < 1 s load latency
    actions = decide(_low_variant(low_since=AT - 1000), CONFIG)
    assert kinds(actions) == ["REMOVE_REPLICA"]
    assert (actions[0].from_count, actions[0].to_count) == (3, 2)
    assert actions[0].worker_id == "w3"  # the busiest host loses it


def test_a_recent_peak_keeps_the_replicas():
    busy_a_moment_ago = _low_variant(low_since=AT - 5000)
    busy_a_moment_ago = busy_a_moment_ago.with_changes(demand={CPU_B1.variant_id: (20.0, 5.0, 5.0)})
    assert decide(busy_a_moment_ago, CONFIG) == []  # 20 rows/s two seconds ago still needs 3 replicas


def test_track_starts_carries_and_clears_low_since():
    config = CONFIG
    first = track(None, _low_variant(low_since=0).with_changes(at_ms=AT), config)
    assert first.live_of(CPU_B1.variant_id).low_since_ms == AT
    later = track(first, _low_variant(low_since=0).with_changes(at_ms=AT + 2000), config)
    assert later.live_of(CPU_B1.variant_id).low_since_ms == AT
    busy = _low_variant(low_since=0).with_changes(at_ms=AT + 3000, live={CPU_B1.variant_id: live(3, 25.0)})
    assert track(later, busy, config).live_of(CPU_B1.variant_id).low_since_ms == 0
    # Then decide removes one replica once the wait is over.
    assert kinds(decide(later.with_changes(at_ms=AT + 1000), config)) == ["REMOVE_REPLICA"]


def test_an_interfered_variant_gets_a_replica_on_a_worker_with_room():
    state = {CPU_B1.variant_id: live(1, 2.0, status=INTERFERED, avg_latency_ms=400.0)}
    workers = [worker("w1", util=1.0, hosts={CPU_B1.variant_id: 1, SMALL_CPU.variant_id: 1}), worker("w2")]
    actions = decide(snapshot(state, workers), CONFIG)
    assert kinds(actions) == ["ADD_REPLICA"] and actions[0].worker_id == "w2" and "interfered" in actions[0].reason


# ---------------------------------------------------------------- vertical

def test_upgrade_when_replicating_costs_more_than_1_5x_the_faster_variant():
    # 120 rows/s: 15 CPU replicas ($1.275/h) vs one T4 at batch 8 (40 ms: 200 rows/s, $0.526/h).
    state = {CPU_B1.variant_id: live(3, 120.0, workers=("w1", "w2", "w3"), demand_accuracy=0.75, demand_slo_ms=200.0)}
    workers = [worker(f"w{i}", util=0.75, hosts={CPU_B1.variant_id: 1}) for i in (1, 2, 3)] + [worker("g1", "gpu-t4")]
    actions = decide(snapshot(state, workers), CONFIG)
    assert kinds(actions) == ["UPGRADE_VARIANT"]
    upgrade = actions[0]
    assert (upgrade.variant_id, upgrade.target_variant_id) == (CPU_B1.variant_id, GPU_B8.variant_id)
    assert upgrade.worker_id == "g1" and upgrade.to_count == 1 and "1.5 x" in upgrade.reason


def test_no_upgrade_when_replicating_is_cheap_enough():
    # 40 rows/s: 5 CPU replicas ($0.425/h) < 1.5 x $0.526/h: replicate instead.
    state = {CPU_B1.variant_id: live(3, 40.0, workers=("w1", "w2", "w3"), demand_accuracy=0.75, demand_slo_ms=200.0)}
    workers = [worker(f"w{i}", util=0.75, hosts={CPU_B1.variant_id: 1}) for i in (1, 2, 3)] + [worker("w4"), worker("w5")]
    assert kinds(decide(snapshot(state, workers), CONFIG)) == ["ADD_REPLICA", "ADD_REPLICA"]


def test_downgrade_when_the_load_falls_to_a_cheaper_variant_that_meets_the_traffic():
    state = {GPU_B8.variant_id: live(1, 2.0, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=300.0)}
    workers = [worker("g1", "gpu-t4", util=0.01, hosts={GPU_B8.variant_id: 1}), worker("w1")]
    actions = decide(snapshot(state, workers, demand={GPU_B8.variant_id: (2.0, 3.0, 2.0)}), CONFIG)
    assert kinds(actions) == ["DOWNGRADE_VARIANT"]
    assert actions[0].target_variant_id == CPU_B1.variant_id and actions[0].worker_id == "w1"


def test_no_downgrade_below_the_accuracy_its_traffic_demands():
    # SMALL_CPU is cheaper still, but too inaccurate for 0.75; CPU_B1 cannot meet a 150 ms SLO under load.
    state = {GPU_B8.variant_id: live(1, 2.0, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=150.0)}
    workers = [worker("g1", "gpu-t4", util=0.01, hosts={GPU_B8.variant_id: 1}), worker("w1")]
    assert decide(snapshot(state, workers), CONFIG) == []


def test_no_downgrade_while_the_load_is_high():
    state = {GPU_B8.variant_id: live(1, 150.0, workers=("g1",), demand_accuracy=0.75, demand_slo_ms=300.0)}
    workers = [worker("g1", "gpu-t4", util=0.8, hosts={GPU_B8.variant_id: 1}), worker("w1")]
    assert "DOWNGRADE_VARIANT" not in kinds(decide(snapshot(state, workers), CONFIG))


# ---------------------------------------------------------------- unloading

def test_unload_a_variant_idle_for_the_configured_time():
    def idle_for(seconds: float):
        state = {SMALL_CPU.variant_id: live(1, 0.0, last_used_ms=int(AT - seconds * 1000))}
        return decide(snapshot(state, [worker("w1", util=0.0, hosts={SMALL_CPU.variant_id: 1})]), CONFIG)
    assert idle_for(59) == []
    actions = idle_for(61)
    assert kinds(actions) == ["UNLOAD_VARIANT"] and actions[0].to_count == 0


def test_a_variant_never_seen_used_nor_loaded_is_not_idle_forever():
    state = {SMALL_CPU.variant_id: live(1, 0.0, last_used_ms=0, loaded_at_ms=0)}
    assert decide(snapshot(state, [worker("w1", util=0.0, hosts={SMALL_CPU.variant_id: 1})]), CONFIG) == []


# ---------------------------------------------------------------- VM autoscaler

def test_add_a_worker_when_all_of_its_kind_are_above_the_threshold():
    workers = [worker("w1", util=0.9), worker("w2", util=0.85)]
    actions = decide(snapshot({}, workers), CONFIG)
    assert kinds(actions) == ["ADD_WORKER"] and actions[0].hardware == "cpu"
    assert (actions[0].from_count, actions[0].to_count) == (2, 3)
    assert decide(snapshot({}, [worker("w1", util=0.9), worker("w2", util=0.5)]), CONFIG) == []


def test_workers_for_replicas_that_found_no_room():
    state = {CPU_B1.variant_id: live(1, 40.0)}
    actions = decide(snapshot(state, [worker("w1", util=1.0, hosts={CPU_B1.variant_id: 1})]), CONFIG)
    # delta = 40 - 8 = 32 -> 4 replicas, no worker has room: 4 CPU workers (one replica fills one).
    assert kinds(actions) == ["ADD_REPLICA"] * 4 + ["ADD_WORKER"]
    assert all(a.worker_id is None for a in actions[:4])
    assert (actions[-1].from_count, actions[-1].to_count) == (1, 5)


def test_worker_actions_back_off_and_stay_within_bounds():
    hot = snapshot({}, [worker("w1", util=0.9), worker("w2", util=0.95)])
    assert decide(hot, CONFIG, last_worker_action_ms=AT - 10_000) == []  # 10 s < 30 s back-off
    assert kinds(decide(hot, CONFIG, last_worker_action_ms=AT - 30_000)) == ["ADD_WORKER"]
    assert decide(hot, replace(CONFIG, max_workers=2)) == []  # at the maximum
    state = {CPU_B1.variant_id: live(1, 40.0)}
    capped = decide(snapshot(state, [worker("w1", util=1.0, hosts={CPU_B1.variant_id: 1})]),
                    replace(CONFIG, max_workers=3))
    assert capped[-1].kind == "ADD_WORKER" and capped[-1].to_count == 3  # 4 wanted, 2 allowed


def test_remove_the_least_utilized_worker_after_a_sustained_low_period():
    low_for = CONFIG.worker_low_readings * CONFIG.worker_check_s * 1000  # 30 s
    state = {SMALL_CPU.variant_id: live(2, 4.0, workers=("w1", "w2"))}
    def workers(since: int):
        return [worker("w1", util=0.1, hosts={SMALL_CPU.variant_id: 1}, low_since_ms=since),
                worker("w2", util=0.05, hosts={SMALL_CPU.variant_id: 1}, low_since_ms=since),
                worker("w3", util=0.5)]
    assert decide(snapshot(state, workers(AT - low_for + 2000)), CONFIG) == []
    actions = decide(snapshot(state, workers(AT - low_for)), CONFIG)
    assert kinds(actions) == ["REMOVE_WORKER"] and actions[0].worker_id == "w2"


def test_never_remove_the_last_replica_of_a_variant_with_traffic_nor_go_below_the_minimum():
    low = AT - 60_000
    state = {SMALL_CPU.variant_id: live(1, 4.0, workers=("w1",))}
    only_host = [worker("w1", util=0.1, hosts={SMALL_CPU.variant_id: 1}, low_since_ms=low), worker("w2", util=0.5)]
    assert decide(snapshot(state, only_host), CONFIG) == []
    empty = [worker("w1", util=0.0, low_since_ms=low), worker("w2", util=0.0, low_since_ms=low)]
    assert kinds(decide(snapshot({}, empty), CONFIG)) == ["REMOVE_WORKER"]  # both empty, but min_workers = 1
    assert decide(snapshot({}, empty[:1]), CONFIG) == []


# ---------------------------------------------------------------- baselines and the entry point

def test_static_never_changes_anything():
    overloaded = {CPU_B1.variant_id: live(1, 500.0, queue_len=1000)}
    plan = BaselinePlan("static", {"vision": CPU_B1.variant_id}, {"vision": 1})
    assert decide(snapshot(overloaded, [worker("w1", util=1.0)]), CONFIG, "static", baseline=plan) == []


def test_replica_only_scales_its_fixed_variant_horizontally_only():
    plan = BaselinePlan("replica-only", {"vision": CPU_B1.variant_id}, {"vision": 1})
    state = {CPU_B1.variant_id: live(3, 120.0, workers=("w1", "w2", "w3"), demand_accuracy=0.75, demand_slo_ms=200.0),
             SMALL_CPU.variant_id: live(1, 0.0, workers=("w4",), last_used_ms=0)}
    workers = [worker(f"w{i}", util=1.0, hosts={CPU_B1.variant_id: 1}) for i in (1, 2, 3)]
    workers += [worker("w4", hosts={SMALL_CPU.variant_id: 1}), worker("g1", "gpu-t4")]
    actions = decide(snapshot(state, workers), CONFIG, "replica-only", baseline=plan)
    assert set(kinds(actions)) == {"ADD_REPLICA", "ADD_WORKER"}  # where infaas upgrades (test above)
    assert {a.variant_id for a in actions if a.kind == "ADD_REPLICA"} == {CPU_B1.variant_id}
    assert all(a.hardware == "cpu" for a in actions)  # no other variant, no other hardware, nothing unloaded


def test_the_entry_point_knows_three_policies():
    assert POLICIES == ("infaas", "static", "replica-only")
    with pytest.raises(ValueError, match="unknown scaling policy"):
        decide(snapshot({}, []), CONFIG, "clipper")
    with pytest.raises(ValueError, match="BaselinePlan"):
        decide(snapshot({}, []), CONFIG, "replica-only")


def test_action_kinds_are_the_avro_scaling_kinds():
    schema = json.loads((Path(__file__).parents[2] / "infaas/schemas/avro/ScalingEvent.avsc").read_text())
    symbols = next(f["type"]["symbols"] for f in schema["fields"] if f["name"] == "kind")
    assert set(KINDS) == set(symbols) - {"TRIGGER"}
    with pytest.raises(ValueError):
        Action("SCALE_SIDEWAYS", "no such thing")
    event = Action("ADD_WORKER", "hot", hardware="cpu", from_count=1, to_count=2).as_event("infaas", 5, "e1")
    assert event.kind == "ADD_WORKER" and event.at == 5 and event.policy == "infaas"
