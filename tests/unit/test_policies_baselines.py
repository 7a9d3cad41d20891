"""The baselines' plans: the fixed variant per task, replicas for the peak (static) or the start."""

from __future__ import annotations

import pytest

from infaas.policies import initial_actions, plan_baseline
from infaas.policies.baselines import TaskDemand, fixed_variant
from infaas.policies.snapshot import PolicyConfig
from tests.unit.test_policies_scaling import variant

CONFIG = PolicyConfig()
CHEAP = variant("small:ort:cpu-2t:b1", intercept=50.0, accuracy=0.70)  # 20 q/s, $0.085/h
ACCURATE = variant("large:ort:cpu-2t:b1", intercept=100.0, accuracy=0.80)  # 10 q/s
ACCURATE_GPU = variant("large:trt:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=5.0, intercept=10.0,
                       accuracy=0.80, load_ms=2000.0)  # 50 ms at 8: 160 q/s, $0.526/h
SLOW = variant("huge:ort:cpu-2t:b1", intercept=400.0, accuracy=0.90)
CATALOG = [CHEAP, ACCURATE, ACCURATE_GPU, SLOW]


def demand(peak: float, accuracy: float = 0.8, slo: float = 300.0, initial: float = 5.0) -> TaskDemand:
    return TaskDemand("vision", peak_qps=peak, initial_qps=initial, max_accuracy=accuracy, min_slo_ms=slo)


def test_the_fixed_variant_is_the_cheapest_at_the_peak_that_meets_every_requirement():
    assert fixed_variant(CATALOG, demand(20.0), CONFIG)[0] == ACCURATE  # 3 CPU replicas: $0.255/h < $0.526/h
    assert fixed_variant(CATALOG, demand(200.0), CONFIG)[0] == ACCURATE_GPU  # 2 T4s beat 25 CPU workers
    assert fixed_variant(CATALOG, demand(20.0, accuracy=0.6), CONFIG)[0] == CHEAP


def test_requirements_are_relaxed_accuracy_first_and_the_plan_says_so():
    chosen, note = fixed_variant(CATALOG, demand(20.0, accuracy=0.9), CONFIG)  # SLOW misses 300 ms under load
    assert chosen.accuracy == 0.80 and "accuracy" in note
    chosen, note = fixed_variant(CATALOG, demand(20.0, slo=20.0), CONFIG)
    assert chosen == ACCURATE_GPU and "fastest" in note  # nothing meets 20 ms under load


def test_static_is_sized_for_the_peak_and_replica_only_for_the_start():
    demands = [demand(20.0, initial=5.0)]
    static = plan_baseline("static", CATALOG, demands, CONFIG)
    assert static.variants == {"vision": ACCURATE.variant_id}
    assert static.replicas == {"vision": 2}  # ceil(20 / 10)
    replica_only = plan_baseline("replica-only", CATALOG, demands, CONFIG)
    assert replica_only.variants == static.variants
    assert replica_only.replicas == {"vision": 1}  # 5 q/s fit one replica with its load headroom
    with pytest.raises(ValueError):
        plan_baseline("infaas", CATALOG, demands, CONFIG)


def test_initial_actions_start_the_workers_the_replicas_fill():
    plan = plan_baseline("static", CATALOG, [demand(20.0)], CONFIG)
    actions = initial_actions(plan, {v.variant_id: v for v in CATALOG}, CONFIG)
    assert [a.kind for a in actions] == ["ADD_WORKER", "ADD_REPLICA", "ADD_REPLICA"]
    assert actions[0].hardware == "cpu" and actions[0].to_count == 2  # one 2-thread replica per 2-vCPU worker


def test_at_equal_planned_cost_static_keeps_the_variant_that_carries_more_per_replica():
    # 140 q/s at 300 ms: two replicas of either at the planned utilization (b1 carries 85, b8 133); static,
    # provisioning the peak at full throughput, needs two of b1 (100 q/s) but one of b8 (160 q/s).
    b1 = variant("large:trt:gpu-t4:b1", hardware="gpu-t4", intercept=10.0, accuracy=0.80)
    b8 = variant("large:trt:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=5.0, intercept=10.0, accuracy=0.80)
    assert fixed_variant([b1, b8], demand(140.0), CONFIG)[0] == b8
    assert plan_baseline("static", [b1, b8], [demand(140.0)], CONFIG).replicas == {"vision": 1}
