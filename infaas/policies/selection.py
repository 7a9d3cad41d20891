"""INFaaS variant selection, per query: a pure function of a snapshot and a request.

1. Candidates: variants of the task (model-less) or of the model (model-specific) visible to the
   app, with accuracy >= the demand and a batch size >= the query's rows, within the cost cap.
2. Latency estimate: the profile's linear fit `latency(b) = slope*b + intercept`, plus, for a
   loaded variant, the wait for the batches already queued ahead of the query.
3. Prefer an ACTIVE variant (neither overloaded nor interfered) that meets the SLO, the cheapest.
4. Otherwise the INACTIVE variant with the lowest `load + inference latency` whose inference
   latency meets the SLO, to be loaded on the least utilized worker of its hardware.
5. Otherwise an OVERLOADED variant that meets the SLO (the scaler is already on it).
   INTERFERED variants never get new queries.

Step 3 scans the (few) loaded variants in Python; step 4 is a vectorized scan over a per-task
index precomputed when profiles change, so a decision is O(candidates) with a small constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..catalog import Variant
from .snapshot import ACTIVE, INACTIVE, INTERFERED, OVERLOADED, Snapshot, WorkerLive

OK, UNKNOWN_MODEL, NO_FEASIBLE_VARIANT = "OK", "UNKNOWN_MODEL", "NO_FEASIBLE_VARIANT"


@dataclass(frozen=True, slots=True)
class Request:
    app_id: str
    task: str | None = None
    model: str | None = None
    variant: str | None = None
    batch: int = 1  # rows in the query's input
    min_accuracy: float | None = None  # 0..1
    latency_ms: float | None = None  # SLO
    max_cost: float | None = None  # USD per 1,000 queries


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    variant_id: str | None = None
    reason: str = ""
    estimated_ms: float = 0.0
    load_on: str | None = None  # worker asked to load the (inactive) variant, if any
    best_accuracy_within_slo: float | None = None
    fastest_latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class CandidateIndex:
    """Static arrays over the variants one (scope, app) may use; built once per profile change."""
    variants: tuple[Variant, ...]
    accuracy: np.ndarray
    batch_size: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    load_ms: np.ndarray
    cost: np.ndarray

    @classmethod
    def build(cls, variants: list[Variant]) -> CandidateIndex:
        ordered = tuple(sorted(variants, key=lambda v: v.variant_id))
        col = lambda name: np.array([getattr(v, name) for v in ordered], dtype=np.float64)  # noqa: E731
        return cls(ordered, col("accuracy"), col("batch_size"), col("slope_ms"), col("intercept_ms"),
                   col("load_ms"), col("cost_per_1k"))

    def __len__(self) -> int:
        return len(self.variants)


def _scope_variants(snapshot: Snapshot, request: Request) -> tuple[tuple, list[Variant]]:
    if request.model is not None:
        key = ("model", request.model)
        chosen = [v for v in snapshot.variants.values() if v.model == request.model]
        newest = max((v.model_version for v in chosen), default=0)  # the latest registered version
        chosen = [v for v in chosen if v.model_version == newest]
    else:
        key = ("task", request.task)
        chosen = [v for v in snapshot.variants.values() if v.task == request.task]
    return key, [v for v in chosen if v.visible_to(request.app_id)]


def candidate_index(snapshot: Snapshot, request: Request) -> CandidateIndex:
    memo_key = ("static", request.model is not None, request.model or request.task, request.app_id)
    index = snapshot._memo.get(memo_key)
    if index is None:
        index = CandidateIndex.build(_scope_variants(snapshot, request)[1])
        snapshot._memo[memo_key] = index
    return index


def _unavailable_mask(snapshot: Snapshot, index: CandidateIndex, memo_key: tuple) -> np.ndarray:
    """True where a variant is not INACTIVE (loaded ones are handled in step 3, interfered never)."""
    mask = snapshot._memo.get(("live",) + memo_key)
    if mask is None:
        mask = np.array([snapshot.live_of(v.variant_id).status != INACTIVE for v in index.variants], dtype=bool)
        snapshot._memo[("live",) + memo_key] = mask
    return mask


def _loaded(snapshot: Snapshot, index: CandidateIndex, memo_key: tuple) -> tuple[Variant, ...]:
    """The index's variants that are loaded somewhere (usually a handful)."""
    loaded = snapshot._memo.get(("loaded",) + memo_key)
    if loaded is None:
        loaded = tuple(v for v in index.variants if snapshot.live_of(v.variant_id).status != INACTIVE)
        snapshot._memo[("loaded",) + memo_key] = loaded
    return loaded


def queue_wait_ms(variant: Variant, queue_len: int, replicas: int) -> float:
    """Time to drain the batches queued ahead: full batches per replica, each at latency(batch)."""
    if queue_len <= 0:
        return 0.0
    batches_ahead = queue_len / (max(replicas, 1) * variant.batch_size)
    return batches_ahead * variant.latency_at(variant.batch_size)


def least_utilized_worker(snapshot: Snapshot, hardware: str, memory_mb: float = 0.0) -> WorkerLive | None:
    """The ready worker of that hardware with the lowest utilization that has room for the variant."""
    fits = [w for w in snapshot.workers.values()
            if w.hardware == hardware and w.ready and (w.memory_budget_mb <= 0 or w.free_memory_mb >= memory_mb)]
    return min(fits, key=lambda w: (w.utilization, w.worker_id), default=None)


def select(snapshot: Snapshot, request: Request) -> Decision:
    if request.variant is not None:
        return _select_exact(snapshot, request)
    memo_key = (request.model is not None, request.model or request.task, request.app_id)
    index = candidate_index(snapshot, request)
    if len(index) == 0:
        what = f"model {request.model!r}" if request.model is not None else f"task {request.task!r}"
        return Decision(UNKNOWN_MODEL, reason=f"no {what} is registered for app {request.app_id!r}")
    min_acc = request.min_accuracy if request.min_accuracy is not None else 0.0
    slo = request.latency_ms if request.latency_ms is not None else math.inf
    max_cost = request.max_cost if request.max_cost is not None else math.inf
    batch = max(request.batch, 1)

    best = _best_active(snapshot, _loaded(snapshot, index, memo_key), batch, min_acc, slo, max_cost, {ACTIVE})
    if best is not None:
        variant, estimate = best
        return Decision(OK, variant.variant_id, "active variant meeting the requirements at least cost", estimate)

    latency = index.slope * batch + index.intercept
    feasible = ((index.accuracy >= min_acc) & (index.batch_size >= batch) & (latency <= slo)
                & (index.cost <= max_cost) & ~_unavailable_mask(snapshot, index, memo_key))
    if feasible.any():
        position = int(np.argmin(np.where(feasible, index.load_ms + latency, np.inf)))
        variant = index.variants[position]
        worker = least_utilized_worker(snapshot, variant.hardware, variant.peak_memory_mb)
        return Decision(OK, variant.variant_id, "inactive variant with the least load + inference latency",
                        float(variant.load_ms + latency[position]), load_on=worker.worker_id if worker else None)

    best = _best_active(snapshot, _loaded(snapshot, index, memo_key), batch, min_acc, slo, max_cost, {OVERLOADED})
    if best is not None:
        variant, estimate = best
        return Decision(OK, variant.variant_id, "overloaded variant (no other meets the requirements)", estimate)
    return _infeasible(index, latency, batch, min_acc, slo, max_cost)


def _best_active(snapshot: Snapshot, loaded: tuple[Variant, ...], batch: int, min_acc: float, slo: float,
                 max_cost: float, statuses: set[str]) -> tuple[Variant, float] | None:
    best: tuple[float, float, Variant] | None = None
    for variant in loaded:
        live = snapshot.live_of(variant.variant_id)
        if live.status not in statuses or variant.accuracy < min_acc or variant.batch_size < batch:
            continue
        if variant.cost_per_1k > max_cost:
            continue
        estimate = variant.latency_at(batch) + queue_wait_ms(variant, live.queue_len, live.replicas)
        if estimate > slo:
            continue
        key = (variant.cost_per_1k, estimate, variant)
        if best is None or key[:2] < best[:2]:
            best = key
    return (best[2], best[1]) if best else None


def _infeasible(index: CandidateIndex, latency: np.ndarray, batch: int, min_acc: float, slo: float,
                max_cost: float) -> Decision:
    fits = (index.batch_size >= batch) & (index.cost <= max_cost)
    within_slo = fits & (latency <= slo)
    accurate = fits & (index.accuracy >= min_acc)
    best_acc = float(index.accuracy[within_slo].max()) if within_slo.any() else None
    fastest = float(latency[accurate].min()) if accurate.any() else None
    parts = [f"best accuracy within {slo:g} ms is {best_acc:.4f}" if best_acc is not None
             else f"no variant answers within {slo:g} ms",
             f"fastest latency at accuracy >= {min_acc:g} is {fastest:.2f} ms" if fastest is not None
             else f"no variant reaches accuracy {min_acc:g} (best: {float(index.accuracy[fits].max(initial=0)):.4f})"]
    if not fits.any():
        parts = [f"no variant takes a batch of {batch} within the cost cap"]
    reason = "no variant meets accuracy >= {:g}, latency <= {:g} ms, cost <= {:g} (interfered ones excluded): {}"
    return Decision(NO_FEASIBLE_VARIANT, reason=reason.format(min_acc, slo, max_cost, "; ".join(parts)),
                    best_accuracy_within_slo=best_acc, fastest_latency_ms=fastest)


def _select_exact(snapshot: Snapshot, request: Request) -> Decision:
    variant = snapshot.variants.get(request.variant)
    if variant is None or not variant.visible_to(request.app_id):
        return Decision(UNKNOWN_MODEL, reason=f"no variant {request.variant!r} is registered for app {request.app_id!r}")
    if variant.batch_size < request.batch:
        return Decision(NO_FEASIBLE_VARIANT, reason=f"variant {variant.variant_id} takes batches of at most "
                        f"{variant.batch_size}, the query has {request.batch} rows")
    live = snapshot.live_of(variant.variant_id)
    estimate = variant.latency_at(request.batch) + queue_wait_ms(variant, live.queue_len, live.replicas)
    if live.status == INACTIVE:
        worker = least_utilized_worker(snapshot, variant.hardware, variant.peak_memory_mb)
        return Decision(OK, variant.variant_id, "variant named by the query (inactive: loading it)",
                        estimate + variant.load_ms, load_on=worker.worker_id if worker else None)
    note = " (interfered)" if live.status == INTERFERED else ""
    return Decision(OK, variant.variant_id, f"variant named by the query{note}", estimate)
