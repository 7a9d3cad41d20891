"""INFaaS variant selection, per query: a pure function of a snapshot and a request.

1. Candidates: variants of the task (model-less) or of the model (model-specific) visible to the
   app, with accuracy >= the demand and a batch size >= the query's rows, within the cost cap.
2. Latency estimate: the profile's linear fit `latency(b) = slope*b + intercept`, plus, for a
   loaded variant, the wait for the batches already queued ahead of the query.
3. Prefer an ACTIVE variant (neither overloaded nor interfered) that meets the SLO, and meets it
   under load (`capacity.usable_batch` >= 1: a query may wait for the batch in service), the
   cheapest (`slo_cost`: what a row costs at the batch the SLO allows, at the planned utilization).
4. Otherwise the cheapest INACTIVE variant (`slo_cost`; ties: the least load + inference latency)
   whose load and inference fit the SLO and that meets it under load, to be loaded on the least
   utilized ready worker of its hardware that has unreserved room (`worker_with_room`; none: on the
   next one); among those whose hardware has a ready worker, if any (the
   others would first wait for a worker to start). Not the fastest: nothing would move a class off
   a costly variant while it keeps it busy (the scaler's DOWNGRADE judges settled load only).
   If none meets the SLO under load: steps 3 and 4 again with the SLO met when idle.
5. Otherwise an OVERLOADED variant that meets the SLO (the scaler is already on it).
6. Otherwise NO_FEASIBLE_VARIANT at once: a cold variant whose load exceeds the query's slack
   would serve it late, and loading one per burst leaves the scaler chasing variants instead of
   adding replicas.
7. Only when nothing loaded meets the accuracy: the cheapest cold variant whose inference meets
   the SLO, so the task gets one.
8. INTERFERED variants get new queries only when nothing else answers the query: at the speed
   their replicas were measured, within the SLO. INFaaS gives them none; where nothing else can
   take the class, that refused queries the interfered variant would have served in time (a 60 s SLO
   refused while 3 replicas shared 2 cores, measured live).

Step 3 scans the (few) loaded variants in Python; step 4 is a vectorized scan over a per-task
index precomputed when profiles change, so a decision is O(candidates) with a small constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..catalog import Variant
from .capacity import slack_utilization, usable_batch
from .execution import worker_with_room
from .snapshot import (
    ACTIVE,
    INACTIVE,
    INTERFERED,
    OVERLOADED,
    PolicyConfig,
    Snapshot,
    VariantLive,
    WorkerLive,
)

OK, UNKNOWN_MODEL, NO_FEASIBLE_VARIANT = "OK", "UNKNOWN_MODEL", "NO_FEASIBLE_VARIANT"
MAX_CACHED = 1024  # per-SLO and per-batch arrays one candidate index keeps
# Selection has no config of its own: the scaler's defaults (SLO batch factor, utilization bounds) price
# a variant as the scaler will provision it.
_SCALER = PolicyConfig()


@dataclass(frozen=True, slots=True)
class Request:
    app_id: str
    task: str | None = None
    model: str | None = None
    variant: str | None = None
    batch: int = 1  # rows in the query's input
    min_accuracy: float | None = None  # 0..1
    latency_ms: float | None = None  # SLO: the time this query has left to be answered in
    max_cost: float | None = None  # USD per 1,000 queries
    # The SLO the query's class asked for, when `latency_ms` is only what is left of it (the dispatcher
    # reads a query some ms after it was sent). Variants are priced on the class's SLO, as the scaler
    # provisions them; whether this query is answered in time is judged on `latency_ms`.
    class_slo_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    variant_id: str | None = None
    reason: str = ""
    estimated_ms: float = 0.0
    load_on: str | None = None  # worker asked to load the (inactive) variant, if any
    # A cheaper variant to load for this class while the query goes to `variant_id` (`_split_off`): once
    # it serves, step 3 sends the class there. `prefetch_on`: the worker asked (None: the next one).
    prefetch: str | None = None
    prefetch_on: str | None = None
    best_accuracy_within_slo: float | None = None
    fastest_latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class CandidateIndex:
    """Static arrays over the variants one (scope, app) may use, most accurate first, so the
    variants meeting an accuracy demand are a prefix. Built once per profile change."""
    variants: tuple[Variant, ...]
    accuracy: np.ndarray
    batch_size: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    load_ms: np.ndarray
    cost: np.ndarray
    _latency: dict = field(default_factory=dict, compare=False, repr=False)  # batch -> latency array

    @classmethod
    def build(cls, variants: list[Variant]) -> CandidateIndex:
        ordered = tuple(sorted(variants, key=lambda v: (-v.accuracy, v.variant_id)))
        col = lambda name: np.array([getattr(v, name) for v in ordered], dtype=np.float64)  # noqa: E731
        return cls(ordered, col("accuracy"), col("batch_size"), col("slope_ms"), col("intercept_ms"),
                   col("load_ms"), col("cost_per_1k"))

    def __len__(self) -> int:
        return len(self.variants)

    def prefix(self, min_accuracy: float) -> int:
        """How many variants (from the front) have accuracy >= min_accuracy."""
        return int(self._descending.searchsorted(-min_accuracy, side="right"))

    @property
    def _descending(self) -> np.ndarray:
        negated = self._latency.get("negated accuracy")
        if negated is None:
            negated = self._latency["negated accuracy"] = -self.accuracy
        return negated

    def latency(self, batch: int) -> np.ndarray:
        latency = self._latency.get(batch)
        if latency is None:
            latency = np.maximum(self.slope * batch + self.intercept, 0.0)
            self._latency[batch] = latency
        return latency

    def slo_cost(self, slo_ms: float) -> tuple[np.ndarray, np.ndarray]:
        """(`slo_cost` of every candidate, whether it meets the SLO under load), cached per SLO."""
        key = ("slo cost", slo_ms)
        cached = self._latency.get(key)
        if cached is None:
            if len(self._latency) > MAX_CACHED:  # SLOs are the clients' choice: keep the cache bounded
                self._latency.clear()
            pairs = [slo_cost(v, slo_ms) for v in self.variants]
            cached = self._latency[key] = (np.array([c for c, _ in pairs], dtype=np.float64),
                                           np.array([fits for _, fits in pairs], dtype=bool))
        return cached

    @property
    def replica_price(self) -> np.ndarray:
        price = self._latency.get("replica price")
        if price is None:
            price = self._latency["replica price"] = np.array([replica_price_per_hour(v) for v in self.variants])
        return price

    def load_and_latency(self, batch: int) -> np.ndarray:
        """What an inactive variant costs the query: load + inference latency (cached per batch)."""
        key = ("load", batch)
        total = self._latency.get(key)
        if total is None:
            total = self._latency[key] = self.load_ms + self.latency(batch)
        return total


@dataclass(frozen=True)
class LiveIndex:
    """The dynamic part, per snapshot: which candidates are inactive, and the loaded ones' state
    (plain Python tuples: the loaded are few, and a loop over them beats numpy's per-call cost)."""
    inactive: np.ndarray  # bool, aligned with the CandidateIndex
    # (position, status, queue wait ms, variant, admission margin ms)
    loaded: tuple[tuple[int, str, float, Variant, float], ...]
    ready_hardware: np.ndarray  # bool, aligned: a ready worker of the variant's hardware exists
    _loadable: dict = field(default_factory=dict, compare=False, repr=False)  # batch -> masks

    def loadable(self, index: CandidateIndex, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(inactive and taking the batch, the same with a ready worker), cached per batch: the
        per-query scan then only adds the request's own bounds."""
        masks = self._loadable.get(batch)
        if masks is None:
            inactive = self.inactive & (index.batch_size >= batch)
            masks = self._loadable[batch] = (inactive, inactive & self.ready_hardware)
        return masks

    @classmethod
    def build(cls, snapshot: Snapshot, index: CandidateIndex) -> LiveIndex:
        lives = [snapshot.live_of(v.variant_id) for v in index.variants]
        loaded = tuple((i, live.status, wait_ms(index.variants[i], live), index.variants[i], admission_margin_ms(live))
                       for i, live in enumerate(lives) if live.status != INACTIVE)
        ready = {w.hardware for w in snapshot.workers.values() if w.ready}
        return cls(np.array([live.status == INACTIVE for live in lives], dtype=bool), loaded,
                   np.array([v.hardware in ready for v in index.variants], dtype=bool))


def wait_ms(variant: Variant, live: VariantLive) -> float:
    """The queue ahead, drained by the replicas that serve now (not those still loading), the query's own
    run slowed as the replicas were observed (`own_run_slowing_ms`; an INTERFERED variant's always, as its
    state says they run slow), and the load (at most `load_ms` more) while none of its replicas serves yet."""
    serving = live.serving_replicas
    loading = variant.load_ms if live.replicas > 0 and serving <= 0 else 0.0
    slowed = live.queue_len > 0 or live.status == INTERFERED
    return (queue_wait_ms(variant, live.queue_len, max(serving, 1), live.batch_ms)
            + (own_run_slowing_ms(variant, live.batch_ms) if slowed else 0.0) + loading)


def admission_margin_ms(live: VariantLive) -> float:
    """What a query's estimate must leave of its SLO to join the variant's queue: how much later than
    estimated its recent answers came (`overrun_ms`, measured by its replicas). Only with a queue ahead:
    its estimate is what errs (the drain between once-a-second reports), and an idle variant is always
    admitted, so that it keeps running and being measured. The simulator's estimate is exact (0)."""
    return live.overrun_ms if live.queue_len > 0 else 0.0


def capacity_starting(live: VariantLive) -> bool:
    """Whether replicas of the variant are still loading or waiting for a worker: the scaler found it short, and
    its capacity is not up yet (a burst's onset)."""
    return live.loading > 0 or live.unplaced > 0


def own_run_slowing_ms(variant: Variant, batch_ms: float) -> float:
    """What a query behind a queue adds to its own profiled run (one row) at the speed the replicas were
    observed at: on contended cores the queue ahead drains slower, and so does the query's own run;
    counting only the former admitted queries that then answered OK but after their SLO (15-33 of a
    3x overload phase). Behind an empty queue it is not counted (see `slowdown`), unless the variant
    is INTERFERED (`wait_ms`)."""
    return (slowdown(variant, batch_ms) - 1.0) * variant.latency_at(1)


def _scope_variants(snapshot: Snapshot, request: Request) -> list[Variant]:
    if request.model is not None:
        chosen = [v for v in snapshot.variants.values() if v.model == request.model]
        newest = max((v.model_version for v in chosen), default=0)  # the latest registered version
        chosen = [v for v in chosen if v.model_version == newest]
    else:
        chosen = [v for v in snapshot.variants.values() if v.task == request.task]
    return [v for v in chosen if v.visible_to(request.app_id)]


def indices(snapshot: Snapshot, request: Request) -> tuple[CandidateIndex, LiveIndex]:
    scope = (request.model is not None, request.model or request.task, request.app_id)
    index = snapshot._memo.get(("static",) + scope)
    if index is None:
        index = CandidateIndex.build(_scope_variants(snapshot, request))
        snapshot._memo[("static",) + scope] = index
    live = snapshot._memo.get(("live",) + scope)
    if live is None:
        live = LiveIndex.build(snapshot, index)
        snapshot._memo[("live",) + scope] = live
    return index, live


def _unknown(request: Request) -> Decision:
    what = f"model {request.model!r}" if request.model is not None else f"task {request.task!r}"
    return Decision(UNKNOWN_MODEL, reason=f"no {what} is registered for app {request.app_id!r}")


def slowdown(variant: Variant, batch_ms: float) -> float:
    """How many times slower than profiled the variant's replicas run now (>= 1), from `batch_ms`, a
    full batch's execution time as they measured it (0: not measured). Co-located load slows them;
    a profile measured on an idle machine then promises a drain they do not deliver. Never < 1:
    a fast interval is not taken as a promise of more than the profile.

    It scales the drain of the queue ahead only, not the query's own run: a variant with an empty
    queue is always admitted, so its replicas keep running and their speed keeps being measured (a
    slow measure would otherwise shut the variant out for good, nothing running to correct it)."""
    profiled = variant.latency_at(variant.batch_size)
    return max(batch_ms / profiled, 1.0) if profiled > 0 else 1.0


def observed_batch_ms(variant: Variant, exec_ms: float, avg_batch: float) -> float:
    """A full batch's execution time from a measured mean (`exec_ms` per batch of `avg_batch` rows on
    average), scaled along the profile's latency curve; 0 when nothing was measured."""
    if exec_ms <= 0 or avg_batch <= 0:
        return 0.0
    at_measured = variant.latency_at(min(avg_batch, variant.batch_size))
    return exec_ms * variant.latency_at(variant.batch_size) / at_measured if at_measured > 0 else exec_ms


def queue_wait_ms(variant: Variant, queue_len: int, replicas: int, batch_ms: float = 0.0) -> float:
    """Time to drain the batches queued ahead: full batches per replica, each at latency(batch),
    at the speed the replicas were observed to run (`slowdown`)."""
    if queue_len <= 0:
        return 0.0
    batches_ahead = queue_len / (max(replicas, 1) * variant.batch_size)
    return batches_ahead * variant.latency_at(variant.batch_size) * slowdown(variant, batch_ms)


def estimated_queue(variant: Variant, replicas: int, reported: int, routed_since: int, elapsed_ms: float,
                    batch_ms: float = 0.0) -> int:
    """The queue now, from one reported `elapsed_ms` ago: what was routed since joins it, and the
    replicas drain it meanwhile at full batches (the units of `queue_wait_ms`), at the observed speed.

    Reports come once a second; a dispatcher deciding on the last one alone sends everything for a
    second and then nothing for a second (the queue it saw was long), leaving the replicas idle. And
    one draining at the profile's rate while co-located load slows the replicas routes far more than
    they serve, and the excess is shed late at the worker."""
    return math.ceil(drained_queue(variant, replicas, reported + routed_since, elapsed_ms, batch_ms))


def drained_queue(variant: Variant, replicas: int, queue: float, elapsed_ms: float, batch_ms: float = 0.0) -> float:
    """`queue`, `elapsed_ms` later with nothing added: the replicas drain it at full batches (the units of
    `queue_wait_ms`), at the observed speed, down to empty."""
    latency = variant.latency_at(variant.batch_size) * slowdown(variant, batch_ms)
    drained = elapsed_ms * max(replicas, 1) * variant.batch_size / latency if latency > 0 else math.inf
    return max(queue - max(drained, 0.0), 0.0)


def slo_cost(variant: Variant, slo_ms: float, config: PolicyConfig = _SCALER) -> tuple[float, bool]:
    """What serving a row on this variant costs for traffic with this SLO, and whether it meets the SLO
    under load. `cost_per_1k` assumes full batches; under an SLO a replica runs the largest batch
    the SLO allows (`usable_batch`) and is planned at the SLO's slack (`slack_utilization`), so a
    big-batch variant is dearer, and a fast one on costly hardware no cheaper, than its profile says.
    No SLO: `cost_per_1k`. Not meeting it under load: the cost at batch 1, full utilization."""
    full = variant.latency_at(variant.batch_size)
    if slo_ms == math.inf or slo_ms <= 0 or full <= 0:
        return variant.cost_per_1k, True
    batch = usable_batch(variant, slo_ms, config.slo_batch_factor)
    latency = variant.latency_at(max(batch, 1))
    utilization = slack_utilization(latency, slo_ms, config) if batch else 1.0
    per_row = variant.cost_per_1k * variant.batch_size / full  # price per ms of a replica, per 1k rows
    return per_row * latency / max(batch, 1) / utilization, batch >= 1


def least_utilized_worker(snapshot: Snapshot, hardware: str, memory_mb: float = 0.0) -> WorkerLive | None:
    """The ready worker of that hardware with the lowest utilization that has room for the variant."""
    fits = [w for w in snapshot.workers.values()
            if w.hardware == hardware and w.ready and (w.memory_budget_mb <= 0 or w.free_memory_mb >= memory_mb)]
    return min(fits, key=lambda w: (w.utilization, w.worker_id), default=None)


def select(snapshot: Snapshot, request: Request) -> Decision:
    if request.variant is not None:
        return _select_exact(snapshot, request, request.variant)
    index, live = indices(snapshot, request)
    if len(index) == 0:
        return _unknown(request)
    min_acc = request.min_accuracy if request.min_accuracy is not None else 0.0
    slo = request.latency_ms if request.latency_ms is not None else math.inf
    max_cost = request.max_cost if request.max_cost is not None else math.inf
    batch = max(request.batch, 1)
    accurate = index.prefix(min_acc)
    latency = index.latency(batch)

    cost, under_load = index.slo_cost(request.class_slo_ms if request.class_slo_ms is not None else slo)
    head = slice(0, accurate)
    bounds = np.ones(accurate, dtype=bool)
    if slo != math.inf:
        bounds &= latency[head] <= slo
    if max_cost != math.inf:
        bounds &= index.cost[head] <= max_cost
    in_time = index.load_and_latency(batch)[head] <= slo
    best = _best_loaded(live, accurate, batch, slo, max_cost, cost, under_load, ACTIVE)
    if best is not None:
        decision = Decision(OK, best[0].variant_id, "active variant meeting the requirements at least cost", best[1])
        return _split_off(snapshot, index, live, head, bounds & under_load[head], cost, batch, decision)
    cold = _load_cold(snapshot, index, live, head, bounds & in_time & under_load[head], cost, latency, batch)
    if cold is not None:
        return cold
    # Nothing loaded or loadable meets the SLO under load: what meets it when idle, loaded first.
    best = _best_loaded(live, accurate, batch, slo, max_cost, cost, None, ACTIVE)
    if best is not None:
        return Decision(OK, best[0].variant_id, "active variant meeting the requirements at least cost "
                        "(none meets the SLO under load)", best[1])
    cold = _load_cold(snapshot, index, live, head, bounds & in_time, cost, latency, batch)
    if cold is not None:
        return cold

    best = _best_loaded(live, accurate, batch, slo, max_cost, cost, None, OVERLOADED)
    if best is not None:
        return Decision(OK, best[0].variant_id, "overloaded variant (no other meets the requirements)", best[1])
    # Nothing answers in time. With no accurate enough variant loaded at all, the best cold one is
    # loaded anyway (the task needs one, and the queries after this one will find it); otherwise the
    # query is answered NO_FEASIBLE_VARIANT at once: never routed to miss its deadline in a queue,
    # nor to a cold variant whose load takes longer than its slack.
    if not any(position < accurate for position, *_ in live.loaded):
        cold = _load_cold(snapshot, index, live, head, bounds, cost, latency, batch)
        if cold is not None:
            return cold
    best = _best_loaded(live, accurate, batch, slo, max_cost, cost, None, INTERFERED)
    if best is not None:
        return Decision(OK, best[0].variant_id, "interfered variant, at the speed it was measured (no other "
                        "meets the requirements)", best[1])
    return _infeasible(index, latency, batch, accurate, min_acc, slo, max_cost)


def _load_cold(snapshot: Snapshot, index: CandidateIndex, live: LiveIndex, head: slice, bounds: np.ndarray,
               cost: np.ndarray, latency: np.ndarray, batch: int) -> Decision | None:
    """The cheapest inactive variant within `bounds` (`slo_cost`; ties: the least load + inference
    latency), a ready worker's first."""
    # A variant whose hardware has a ready worker loads now; any other waits for a new worker
    # (20-30 s) before its load starts, which load + inference latency does not count.
    inactive, ready = live.loadable(index, batch)
    feasible = ready[head] & bounds
    if not feasible.any():
        feasible = inactive[head] & bounds
    if not feasible.any():
        return None
    cheapest = np.flatnonzero(feasible & (cost[head] <= cost[head][feasible].min() * (1 + 1e-9)))
    position = int(cheapest[np.argmin(index.load_and_latency(batch)[head][cheapest])])
    variant = index.variants[position]
    worker = worker_with_room(snapshot, variant)
    reason = "the cheapest inactive variant that meets the requirements"
    if worker is None:
        reason += f" (no ready {variant.hardware} worker has room: one has to start first)"
    return Decision(OK, variant.variant_id, reason, float(variant.load_ms + latency[position]),
                    load_on=worker.worker_id if worker else None)


def replica_price_per_hour(variant: Variant) -> float:
    """What a replica of the variant costs per hour, from its profile's `cost_per_1k` (full batches)."""
    full = variant.latency_at(variant.batch_size)
    return variant.cost_per_1k * variant.batch_size * 3600.0 / full if full > 0 else 0.0


def _split_off(snapshot: Snapshot, index: CandidateIndex, live: LiveIndex, head: slice, bounds: np.ndarray,
               cost: np.ndarray, batch: int, decision: Decision) -> Decision:
    """`decision` (an active variant), with a cheaper variant to prefetch for the class if there is one.

    An active variant that meets every demand takes every class of its task, so the cheaper variants
    the less demanding classes allow would never load, and it would scale out at its own price. The
    cheapest cold variant that meets the class under load (`bounds`) and can load now (a ready worker)
    is prefetched, onto a ready worker with room (`worker_with_room`; none: no prefetch), when it serves a
    row for less than the active one by `upgrade_cost_ratio`, and moving
    all of the active variant's replicas to it would save that ratio x one replica of it: a class riding
    on a few lightly used replicas costs little to keep there, while every variant loaded for a class
    costs a replica at least, a whole GPU on a GPU (the scaler's merge folds such a variant back once
    it is lightly used; the ratio keeps the two apart). The query itself stays on the active variant:
    the load would make it late."""
    ratio = _SCALER.upgrade_cost_ratio
    active = snapshot.variants[decision.variant_id or ""]
    position = next(p for p, _, _, v, _ in live.loaded if v is active)
    _, ready = live.loadable(index, batch)
    spend = snapshot.live_of(active.variant_id).replicas * replica_price_per_hour(active)
    # What moving the whole active spend to the cheaper variant would save must pay for `ratio` replicas
    # of it: a class's share then plausibly fills the one it starts with.
    saving = spend * np.maximum(1.0 - cost[head] / cost[position], 0.0)
    feasible = ready[head] & bounds & (cost[head] * ratio < cost[position]) & (index.replica_price[head] * ratio <= saving)
    if not feasible.any():
        return decision
    cheaper = _load_cold(snapshot, index, live, head, feasible, cost, index.latency(batch), batch)
    if cheaper is None or cheaper.load_on is None:
        return decision  # no worker has room: a prefetch would wait for (and pay) a whole new worker
    return replace(decision, prefetch=cheaper.variant_id, prefetch_on=cheaper.load_on,
                   reason=f"{decision.reason}; prefetching {cheaper.variant_id}, at least {ratio:g}x cheaper per row")


def select_offline(snapshot: Snapshot, request: Request) -> Decision:
    """Offline (batch) work has no latency SLO: the cheapest variant per query that meets the
    accuracy demand and the cost cap (its batch size runs full, so its cost is the true one)."""
    index, _ = indices(snapshot, request)
    if len(index) == 0:
        return _unknown(request)
    min_acc = request.min_accuracy if request.min_accuracy is not None else 0.0
    max_cost = request.max_cost if request.max_cost is not None else math.inf
    head = slice(0, index.prefix(min_acc))
    affordable = index.cost[head] <= max_cost
    if not affordable.any():
        cheapest = float(index.cost[head].min()) if head.stop else None
        reason = (f"no variant reaches accuracy {min_acc:g} (best: {float(index.accuracy[0]):.4f})" if not head.stop
                  else f"the cheapest variant with accuracy >= {min_acc:g} costs {cheapest:.3g} per 1,000 queries, "
                       f"over the cap of {max_cost:g}")
        return Decision(NO_FEASIBLE_VARIANT, reason=reason)
    position = int(np.argmin(np.where(affordable, index.cost[head], np.inf)))
    variant = index.variants[position]
    return Decision(OK, variant.variant_id, "offline: the cheapest variant meeting the accuracy and cost cap",
                    variant.latency_at(variant.batch_size))


def _best_loaded(live: LiveIndex, accurate: int, batch: int, slo: float, max_cost: float, cost: np.ndarray,
                 fits: np.ndarray | None, *statuses: str) -> tuple[Variant, float] | None:
    """Among loaded variants in `statuses` meeting every requirement (and `fits`, if given: the SLO under
    load): the cheapest (`cost`, aligned with the index: `slo_cost`), then the fastest (no SLO, `slo`
    infinite: the fastest, then the cheapest)."""
    best = None
    for position, state, wait, variant, margin in live.loaded:
        if (state not in statuses or position >= accurate or variant.batch_size < batch
                or (fits is not None and not fits[position])
                or variant.cost_per_1k > max_cost):
            continue
        estimate = variant.latency_at(batch) + wait
        key = (float(cost[position]), estimate) if slo != math.inf else (estimate, variant.cost_per_1k)
        if estimate + margin <= slo and (best is None or key < best[0]):
            best = (key, estimate, variant)
    return (best[2], best[1]) if best else None


def _infeasible(index: CandidateIndex, latency: np.ndarray, batch: int, accurate: int, min_acc: float,
                slo: float, max_cost: float) -> Decision:
    """What was possible: the best accuracy within the SLO, the fastest latency at the accuracy."""
    fits = index.batch_size >= batch
    if max_cost != math.inf:
        fits &= index.cost <= max_cost
    within_slo = fits & (latency <= slo)
    first = int(within_slo.argmax())  # most accurate first: the first hit is the best accuracy
    best_acc = float(index.accuracy[first]) if within_slo[first] else None
    accurate_fits = fits[:accurate]
    fastest = float(latency[:accurate][accurate_fits].min()) if accurate_fits.any() else None
    if not fits.any():
        explanation = f"no variant takes a batch of {batch} within the cost cap"
    else:
        best_any = float(index.accuracy[int(fits.argmax())])
        explanation = "; ".join((
            f"best accuracy within {slo:g} ms is {best_acc:.4f}" if best_acc is not None
            else f"no variant answers within {slo:g} ms",
            f"fastest latency at accuracy >= {min_acc:g} is {fastest:.2f} ms" if fastest is not None
            else f"no variant reaches accuracy {min_acc:g} (best: {best_any:.4f})"))
    reason = "no variant meets accuracy >= {:g}, latency <= {:g} ms, cost <= {:g} (interfered ones at their measured speed): {}"
    return Decision(NO_FEASIBLE_VARIANT, reason=reason.format(min_acc, slo, max_cost, explanation),
                    best_accuracy_within_slo=best_acc, fastest_latency_ms=fastest)


def _select_exact(snapshot: Snapshot, request: Request, variant_id: str) -> Decision:
    """`variant_id` is `request.variant`, checked not None by the caller."""
    variant = snapshot.variants.get(variant_id)
    if variant is None or not variant.visible_to(request.app_id):
        return Decision(UNKNOWN_MODEL, reason=f"no variant {request.variant!r} is registered for app {request.app_id!r}")
    if variant.batch_size < request.batch:
        return Decision(NO_FEASIBLE_VARIANT, reason=f"variant {variant.variant_id} takes batches of at most "
                        f"{variant.batch_size}, the query has {request.batch} rows")
    live = snapshot.live_of(variant.variant_id)
    estimate = variant.latency_at(request.batch) + queue_wait_ms(variant, live.queue_len, live.replicas, live.batch_ms)
    if live.status == INACTIVE:
        worker = least_utilized_worker(snapshot, variant.hardware, variant.peak_memory_mb)
        return Decision(OK, variant.variant_id, "variant named by the query (inactive: loading it)",
                        estimate + variant.load_ms, load_on=worker.worker_id if worker else None)
    note = " (interfered)" if live.status == INTERFERED else ""
    return Decision(OK, variant.variant_id, f"variant named by the query{note}", estimate)
