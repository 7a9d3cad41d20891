"""What a trace allows: lower bounds on the cost of serving it, to set the ratios against.

Over the measured window (arrivals after the warm-up), one row per query:
  cheapest fluid  every request class (task, accuracy demand, SLO) on its cheapest variant that meets
                  its accuracy and its SLO under load, with capacity that follows the load second by
                  second and is priced per replica-second (no whole workers, no start-up, no slack);
  static's fluid  every class on the baselines' fixed variant of its task, capacity as above;
  static's packed the fixed variant in whole workers, resized every 10 s to that window's busiest
                  second (a 10 s reaction, still no start-up and no slack);
  best packed     the same whole workers and 10 s reaction, with each class of a task on the variant that
                  makes the task cheapest: every assignment of its classes to their `PACKED_CANDIDATES`
                  cheapest variants per row (and static's) is priced, classes sharing a variant sharing its
                  workers. What a cost-aware autoscaler could reach with whole workers and no co-location of
                  variants (as the simulator places replicas: each reserves its share of a worker).
`static cost / bound` is the most any policy can save against static under that model, and
`infaas's ratio / that` the share of it infaas reaches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..catalog import Variant
from ..policies.capacity import replica_price_per_hour, replica_share, replica_throughput, usable_batch
from ..policies.snapshot import PolicyConfig
from .traces import Workload

REACTION_S = 10
PACKED_CANDIDATES = 5  # variants per class the best packed bound tries (the cheapest per row)


def per_second_counts(workload: Workload, warmup_ms: float) -> np.ndarray:
    """counts[class, second] of the measured window."""
    measured = workload.arrival_ms >= warmup_ms
    seconds = ((workload.arrival_ms[measured] - warmup_ms) // 1000).astype(np.int64)
    counts = np.zeros((len(workload.classes), int(seconds.max(initial=-1)) + 1))
    np.add.at(counts, (workload.demand_class[measured], seconds), 1)
    return counts


def row_price(variant: Variant, slo_ms: float, config: PolicyConfig) -> float:
    """USD per row served at full throughput (fluid capacity)."""
    return replica_price_per_hour(variant, config) / 3600.0 / replica_throughput(variant, slo_ms, config.slo_batch_factor)


def cheapest_row_price(variants: Sequence[Variant], task: str, accuracy: float, slo_ms: float,
                       config: PolicyConfig) -> float:
    prices = [row_price(v, slo_ms, config) for v in variants
              if v.task == task and v.accuracy >= accuracy - 1e-12 and usable_batch(v, slo_ms, config.slo_batch_factor)]
    return min(prices, default=math.inf)


def packed_cost(per_second: np.ndarray, variant: Variant, slo_ms: float, config: PolicyConfig) -> float:
    """USD: `per_second` rows on `variant` in whole workers, resized every `REACTION_S` to the window's
    busiest second."""
    windows = math.ceil(len(per_second) / REACTION_S)
    peaks = np.pad(per_second, (0, windows * REACTION_S - len(per_second))).reshape(windows, REACTION_S).max(axis=1)
    replicas = np.ceil(peaks / replica_throughput(variant, slo_ms, config.slo_batch_factor) - 1e-9)
    per_worker = max(1, math.floor(1.0 / replica_share(variant, config) + 1e-9))
    worker_price = replica_price_per_hour(variant, config) / replica_share(variant, config)
    return float(np.ceil(replicas / per_worker).sum()) * worker_price * REACTION_S / 3600.0


def best_packed_cost(counts: np.ndarray, classes: Sequence[tuple[str, float, float]], mine: list[int],
                     variants: Sequence[Variant], static: Variant | None, config: PolicyConfig) -> float:
    """USD: the task's classes `mine` (rows of `counts`) on the assignment of variants that costs least in
    whole workers (`packed_cost`); each class tries its `PACKED_CANDIDATES` cheapest variants per row and
    static's."""
    options = []
    for c in mine:
        task, accuracy, slo = classes[c]
        feasible = [v for v in variants if v.task == task and v.accuracy >= accuracy - 1e-12
                    and usable_batch(v, slo, config.slo_batch_factor)]
        cheapest = sorted(feasible, key=lambda v: row_price(v, slo, config))[:PACKED_CANDIDATES]
        options.append(cheapest + ([static] if static is not None and static in feasible and static not in cheapest
                                   else []))
    priced: dict[tuple[str, tuple[int, ...]], float] = {}

    def price(variant: Variant, sharing: tuple[int, ...]) -> float:
        key = (variant.variant_id, sharing)
        if key not in priced:
            priced[key] = packed_cost(counts[list(sharing)].sum(axis=0), variant,
                                      min(classes[c][2] for c in sharing), config)
        return priced[key]

    best = math.inf
    for choice in itertools.product(*options):
        users: dict[str, tuple[Variant, list[int]]] = {}
        for c, variant in zip(mine, choice, strict=True):
            users.setdefault(variant.variant_id, (variant, []))[1].append(c)
        best = min(best, sum(price(variant, tuple(sharing)) for variant, sharing in users.values()))
    return best


def cost_bounds(workload: Workload, variants: Sequence[Variant], fixed: Mapping[str, str], config: PolicyConfig,
                warmup_ms: float) -> dict[str, float]:
    """USD: `cheapest_fluid`, `static_fluid`, `static_packed`, `best_packed` (see the module docstring)."""
    counts = per_second_counts(workload, warmup_ms)
    by_id = {v.variant_id: v for v in variants}
    rows = counts.sum(axis=1)
    cheapest = sum(rows[c] * cheapest_row_price(variants, task, accuracy, slo, config)
                   for c, (task, accuracy, slo) in enumerate(workload.classes) if rows[c])
    static_fluid, packed, best = 0.0, 0.0, 0.0
    for task in sorted({cls[0] for cls in workload.classes}):
        mine = [c for c, cls in enumerate(workload.classes) if cls[0] == task and rows[c]]
        if not mine:
            continue
        static = by_id.get(fixed.get(task, ""))
        best += best_packed_cost(counts, workload.classes, mine, variants, static, config)
        if static is None:
            continue
        static_fluid += sum(rows[c] * row_price(static, workload.classes[c][2], config) for c in mine)
        packed += packed_cost(counts[mine].sum(axis=0), static, min(workload.classes[c][2] for c in mine), config)
    return {"cheapest_fluid": float(cheapest), "static_fluid": float(static_fluid), "static_packed": packed,
            "best_packed": best}
