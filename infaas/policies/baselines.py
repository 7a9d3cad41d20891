"""The baselines INFaaS was compared with, as plans: one fixed variant per task.

  static        TF-Serving-style provisioning: `ceil(peak / thr)` replicas of the fixed variant,
                placed before the first query, never changed (`peak`: the highest 1-second
                demand of the trace, in rows/s; `thr`: the per-replica throughput at the largest
                batch the SLO allows, capacity.replica_throughput).
  replica-only  INFaaS's INDIVIDUAL mode (SageMaker/Clipper-style): the same fixed variant, started
                with the replicas the initial demand needs, then scaled horizontally only.

The fixed variant of a task is the one a careful operator would deploy for the whole trace:
among the variants that meet the highest accuracy demand of the trace and the tightest SLO under
load (`slo_batch_factor x latency(1) <= SLO`, capacity.usable_batch), the one that serves the peak
at the least cost (replicas needed at the batch the SLO allows x price). If none meets both, the accuracy is relaxed first (the most accurate
variant within the SLO), then the SLO (the fastest variant at that accuracy); the plan notes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..catalog import Variant
from .actions import ADD_REPLICA, ADD_WORKER, Action
from .capacity import (
    hardware_of,
    replica_share,
    replica_throughput,
    replicas_for,
    serving_cost_per_hour,
    usable_batch,
)
from .snapshot import PolicyConfig

BASELINES = ("static", "replica-only")


@dataclass(frozen=True, slots=True)
class TaskDemand:
    """What a task's trace asks for, as the baselines see it."""
    task: str
    peak_qps: float  # the highest 1-second rate
    initial_qps: float  # the mean rate over the first seconds
    max_accuracy: float  # the highest accuracy demand (absolute, 0..1)
    min_slo_ms: float  # the tightest latency SLO
    rows_per_query: float = 1.0


@dataclass(frozen=True)
class BaselinePlan:
    policy: str
    variants: Mapping[str, str]  # task -> the fixed variant id
    replicas: Mapping[str, int]  # task -> replicas to provision before the first query
    notes: Mapping[str, str] = field(default_factory=dict)  # task -> why the choice (relaxed requirements)


def _meets(variant: Variant, demand: TaskDemand, config: PolicyConfig, accuracy: bool = True,
           slo: bool = True) -> bool:
    return (variant.batch_size >= demand.rows_per_query and math.isfinite(replica_throughput(variant))
            and (not accuracy or variant.accuracy >= demand.max_accuracy)
            and (not slo or usable_batch(variant, demand.min_slo_ms, config.slo_batch_factor) >= 1))


def fixed_variant(variants: Iterable[Variant], demand: TaskDemand, config: PolicyConfig) -> tuple[Variant, str]:
    """The task's fixed variant and a note on the requirements it had to relax ("" if none)."""
    pool = [v for v in variants if v.task == demand.task]
    if not pool:
        raise ValueError(f"no variant of task {demand.task!r} in the catalogue")
    peak = demand.peak_qps * demand.rows_per_query
    cost = lambda v: serving_cost_per_hour(v, peak, config, demand.min_slo_ms)  # noqa: E731
    feasible = [v for v in pool if _meets(v, demand, config)]
    if feasible:
        # Equal cost at the planned utilization (whole replicas): the one carrying more per replica, since
        # static provisions the peak at its full throughput (a batch-16 replica where batch 1 needs two).
        return min(feasible, key=lambda v: (cost(v), -replica_throughput(v, demand.min_slo_ms,
                                                                          config.slo_batch_factor),
                                            v.variant_id)), ""
    within_slo = [v for v in pool if _meets(v, demand, config, accuracy=False)]
    if within_slo:
        best = max(within_slo, key=lambda v: (v.accuracy, -cost(v), v.variant_id))
        return best, f"no variant reaches accuracy {demand.max_accuracy:.3f} within {demand.min_slo_ms:g} ms: " \
                     f"the most accurate within the SLO ({best.accuracy:.3f})"
    accurate = [v for v in pool if _meets(v, demand, config, slo=False)] or pool
    best = min(accurate, key=lambda v: (v.latency_at(1), v.variant_id))
    return best, f"no variant meets {demand.min_slo_ms:g} ms under load: the fastest ({best.variant_id})"


def plan_baseline(policy: str, variants: Iterable[Variant], demands: Iterable[TaskDemand],
                  config: PolicyConfig) -> BaselinePlan:
    if policy not in BASELINES:
        raise ValueError(f"{policy!r} is not a baseline; one of {', '.join(BASELINES)}")
    variants = list(variants)
    chosen, replicas, notes = {}, {}, {}
    for demand in sorted(demands, key=lambda d: d.task):
        variant, note = fixed_variant(variants, demand, config)
        chosen[demand.task] = variant.variant_id
        slo = demand.min_slo_ms
        if policy == "static":
            thr = replica_throughput(variant, slo, config.slo_batch_factor)
            replicas[demand.task] = max(1, math.ceil(demand.peak_qps * demand.rows_per_query / thr - 1e-9))
        else:
            replicas[demand.task] = replicas_for(variant, demand.initial_qps * demand.rows_per_query, config, slo)
        if note:
            notes[demand.task] = note
    return BaselinePlan(policy, chosen, replicas, notes)


def replicas_per_worker(variant: Variant, config: PolicyConfig) -> int:
    """Replicas of one variant share a worker only while they fit whole (e.g. 1-thread CPU replicas), in
    its units and in its memory."""
    fits = math.floor(1.0 / replica_share(variant, config) + 1e-9)
    memory_mb = hardware_of(variant, config).memory_mb
    if memory_mb > 0 and variant.peak_memory_mb > 0:
        fits = min(fits, math.floor(memory_mb / variant.peak_memory_mb))
    return max(1, fits)


def initial_actions(plan: BaselinePlan, variants: Mapping[str, Variant], config: PolicyConfig) -> list[Action]:
    """Provisioning before the first query: the workers the plan's replicas fill, then the replicas
    (placed on those workers, in order, by the executor: `worker_id` None)."""
    units_needed: dict[str, float] = {}
    replicas: list[Action] = []
    for task, variant_id in sorted(plan.variants.items()):
        variant = variants[variant_id]
        count = plan.replicas[task]
        per_worker = replicas_per_worker(variant, config)
        units_needed[variant.hardware] = units_needed.get(variant.hardware, 0) + math.ceil(count / per_worker)
        replicas += [Action(ADD_REPLICA, f"{plan.policy}: replica {i + 1} of {count} for task {task}", variant_id,
                            hardware=variant.hardware, from_count=i, to_count=i + 1) for i in range(count)]
    workers = [Action(ADD_WORKER, f"{plan.policy}: workers for the provisioned replicas", hardware=hw,
                      from_count=0, to_count=int(n)) for hw, n in sorted(units_needed.items())]
    return workers + replicas
