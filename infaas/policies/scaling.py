"""INFaaS's scaling policies as one pure function: `decide(snapshot, config, policy) -> [Action]`.

Rules (INFaaS, "Model autoscaler" and "VM autoscaler"; thresholds in `PolicyConfig`):
  horizontal  per loaded variant, every tick: add `ceil(delta / thr)` replicas when INFaaS's delta
              (capacity.py) is positive; remove one replica once the variant has been "low" (one
              replica fewer would still leave no delta) for at least its load latency. An
              INTERFERED variant gets a replica on another worker (its queries move there).
  vertical    (infaas only) per loaded variant with traffic: compare staying (the replicas the
              variant needs, priced) with moving its traffic to a variant that is not loaded and
              still meets the requirements of that traffic (the highest accuracy and tightest SLO
              it served). While it must scale up, only faster variants (higher per-replica
              throughput: bigger batch, another optimizer, GPU) are considered: UPGRADE when
              staying costs more than `upgrade_cost_ratio` (1.5) x the target. Otherwise, with the
              peak of its recent demand, any cheaper variant: DOWNGRADE on the same ratio.
  unload      (infaas only) a variant idle for `unload_idle_s` is unloaded; memory goes back.
  placement   a new replica goes to a worker of its hardware with room (projected utilization
              <= worker_util_high, or empty), the fullest first: co-location before new workers.
  workers     add a worker of a hardware kind when all its workers are above worker_util_high,
              or all are interfered, or more than worker_overloaded_share of them host an
              overloaded variant, or replicas found no room; remove the least utilized worker
              once it has been low for worker_low_readings x worker_check_s and hosts no last
              replica of a variant with traffic; never outside [min_workers, max_workers]
              (all kinds together), one worker action per `worker_backoff_s`.

SLO-first (`PolicyConfig.slo_first`, infaas; the baselines keep the rules above, `policy_config`):
  capacity    replicas planned at a target utilization from the SLO slack, 1 - latency(b)/SLO in
              [0.5, 0.85], instead of the load-latency headroom (capacity.target_utilization), for the
              demand plus `noise_headroom_sigmas` of its Poisson noise, up and down alike;
  scale-up    on the arrival rate's rising trend too (`trend_horizon_s` ahead, the slope's lower
              confidence bound: noise is no trend), not only its level;
  scale-down  the peak of the last `peak_window_s` (of `peak_smooth_windows`-second means: one second's
              Poisson spike is noise), low for `scale_down_hold_s`, and nothing removed
              while an addition still loads or waits for a worker (one action until its effect shows);
  vertical    never moves a variant whose queries named it (`VariantLive.named`);
  co-location a light GPU variant (its peak needs at most `gpu_colocation_share` of a replica) reserves
              that share of a GPU and moves beside other light ones whose SLOs allow waiting for each
              other's batches; one that is no longer light moves back to a GPU of its own (`colocation`);
  workers     per hardware kind: replicas without room get workers at once (no back-off: a lost
              worker's replicas recover this way), and a warm pool of idle workers from the recent
              variability (`warm_pool_size`; CPU only); no worker for a kind that merely runs hot (nothing
              placed would use it); only empty workers beyond the pool leave (backed off per kind and
              direction).

Policies: "infaas" (all rules), "replica-only" (horizontal + placement + workers, for the fixed
variant of each task in the `BaselinePlan`), "static" (nothing: the plan's replicas, provisioned
at the start, never change).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace

import numpy as np

from ..catalog import Variant
from . import execution
from .actions import (
    ADD_REPLICA,
    ADD_WORKER,
    DOWNGRADE_VARIANT,
    REMOVE_REPLICA,
    REMOVE_WORKER,
    UNLOAD_VARIANT,
    UPGRADE_VARIANT,
    Action,
)
from .baselines import BaselinePlan
from .capacity import (
    MIN_USEFUL_SHARE,
    hardware_of,
    noise_headroom_rows,
    peak_windows,
    recent_peak_rows,
    replica_price_per_hour,
    replica_share,
    replica_throughput,
    replicas_for,
    scale_delta,
    scale_up_demand,
    target_utilization,
    usable_batch,
)
from .monitoring import variant_is_low
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

POLICIES = ("infaas", "static", "replica-only")
INFAAS, STATIC, REPLICA_ONLY = POLICIES
UP, DOWN = "up", "down"
# When worker actions last happened: one time for every kind and direction (INFaaS), or per
# (hardware kind, UP | DOWN) (SLO-first); None or missing: never.
WorkerActionTimes = int | Mapping[tuple[str, str], int] | None


def policy_config(config: PolicyConfig, policy: str) -> PolicyConfig:
    """The baselines run INFaaS's published autoscaler; the SLO-first rules are infaas's."""
    return config if policy == INFAAS else replace(config, slo_first=False)


def decide(snapshot: Snapshot, config: PolicyConfig, policy: str = INFAAS,
           last_worker_action_ms: WorkerActionTimes = None, baseline: BaselinePlan | None = None) -> list[Action]:
    """Every scaling action the policy takes now, each with its reason.

    `last_worker_action_ms`: when worker actions last happened, for the back-off (`WorkerActionTimes`).
    `baseline`: the fixed variant per task, needed by "replica-only".
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown scaling policy {policy!r}; one of {', '.join(POLICIES)}")
    config = policy_config(config, policy)
    if policy == STATIC:
        return []
    if policy == REPLICA_ONLY and baseline is None:
        raise ValueError("the replica-only policy needs a BaselinePlan (its fixed variant per task)")
    ledger = Ledger.of(snapshot, config)
    scaled = _scaled_variants(snapshot, policy, baseline)
    actions: list[Action] = []
    moved: set[str] = set()
    if policy == INFAAS:
        for variant_id in scaled:
            move = vertical(snapshot, config, ledger, variant_id)
            if move:
                moved.add(variant_id)
                actions += move
    for variant_id in scaled:
        if variant_id not in moved:
            step = colocation(snapshot, config, ledger, variant_id) if policy == INFAAS else []
            actions += step or horizontal(snapshot, config, ledger, variant_id)
    if policy == INFAAS:
        actions += unload_idle(snapshot, config, exclude=moved)
    keep = set(baseline.variants.values()) if baseline is not None else set()
    actions += workers(snapshot, config, ledger, last_worker_action_ms, keep=keep)
    return actions


def _scaled_variants(snapshot: Snapshot, policy: str, baseline: BaselinePlan | None) -> list[str]:
    loaded = [vid for vid, live in snapshot.live.items()
              if vid in snapshot.variants and live.replicas + live.unplaced > 0]
    if policy == REPLICA_ONLY:
        if baseline is None:  # `decide` rejects replica-only without a plan before it gets here
            raise ValueError("the replica-only policy needs a BaselinePlan (its fixed variant per task)")
        fixed = set(baseline.variants.values())
        loaded = [vid for vid in loaded if vid in fixed]
    return sorted(loaded)


# ---------------------------------------------------------------- placement

@dataclass
class Ledger:
    """Projected utilization and memory of each worker while one decision places replicas."""
    config: PolicyConfig
    workers: dict[str, WorkerLive]
    util: dict[str, float]
    free_mb: dict[str, float]
    hosted: dict[str, int]
    wanted: dict[str, float]  # hardware -> workers' worth of replicas that found no room (fractional)
    snapshot: Snapshot | None = None
    reserved: dict[str, float] = field(default_factory=dict)  # SLO-first: `execution.reserved_share`
    hosts: dict[str, set[str]] = field(default_factory=dict)  # worker -> the variants it hosts

    @classmethod
    def of(cls, snapshot: Snapshot, config: PolicyConfig) -> Ledger:
        workers = dict(snapshot.workers)
        return cls(config, workers, {w: x.utilization for w, x in workers.items()},
                   {w: (x.free_memory_mb if x.memory_budget_mb > 0 else math.inf) for w, x in workers.items()},
                   {w: sum(1 for n in x.variants.values() if n > 0) for w, x in workers.items()}, {}, snapshot,
                   {w: execution.reserved_share(snapshot, x, config) for w, x in workers.items()},
                   {w: {v for v, n in x.variants.items() if n > 0} for w, x in workers.items()})

    def place(self, variant: Variant, load_fraction: float, exclude: tuple[str, ...] = (),
              want: bool = True, shared_only: bool = False) -> str | None:
        """The worker for one more replica (None: no room; then, if `want`, a worker of its hardware is wanted).
        `shared_only`: only a worker that hosts other variants (co-location)."""
        whole = replica_share(variant, self.config)
        if self.config.slo_first and self.snapshot is not None and execution.light(self.snapshot, variant, self.config):
            return self._place_light(variant, exclude, want, shared_only)
        if shared_only:
            return None
        # SLO-first reserves a replica's whole share: co-located replicas planned at their current load
        # contend as soon as the load rises, which is when their capacity is needed.
        share = whole if self.config.slo_first else whole * min(max(load_fraction, 0.0), 1.0)
        fits = [w for w, x in self.workers.items()
                if x.hardware == variant.hardware and w not in exclude and self.free_mb[w] >= variant.peak_memory_mb
                and (self.hosted[w] == 0 or self.util[w] + share <= self.config.worker_util_high)]
        if not fits:
            if want:
                self.wanted[variant.hardware] = self.wanted.get(variant.hardware, 0.0) + whole
            return None
        # Ready workers first; then the fullest that still has room (pack before spreading).
        chosen = min(fits, key=lambda w: (not self.workers[w].ready, -self.util[w], w))
        return self._take(chosen, variant, share)

    def _place_light(self, variant: Variant, exclude: tuple[str, ...], want: bool, shared_only: bool) -> str | None:
        """A light GPU replica (`execution.light`): on the fullest GPU whose reserved share leaves room for it and
        whose variants it `can_share` with; else (unless `shared_only`) on an empty one."""
        snapshot, share = self.snapshot, self.config.gpu_colocation_share
        assert snapshot is not None
        fits = [w for w, x in self.workers.items()
                if x.hardware == variant.hardware and w not in exclude and self.free_mb[w] >= variant.peak_memory_mb
                and self.reserved.get(w, 0.0) + share <= 1.0 + 1e-9
                and ((self.hosts[w] - {variant.variant_id}
                      and execution.can_share(snapshot, variant, self.hosts[w], self.config))
                     or (not shared_only and not self.hosts[w]))]
        if not fits:
            if want:
                self.wanted[variant.hardware] = self.wanted.get(variant.hardware, 0.0) + share
            return None
        chosen = min(fits, key=lambda w: (not self.workers[w].ready, -self.reserved.get(w, 0.0), w))
        return self._take(chosen, variant, share)

    def _take(self, chosen: str, variant: Variant, share: float) -> str:
        self.util[chosen] += share
        self.reserved[chosen] = self.reserved.get(chosen, 0.0) + share
        self.free_mb[chosen] -= variant.peak_memory_mb
        self.hosted[chosen] += 1
        self.hosts.setdefault(chosen, set()).add(variant.variant_id)
        return chosen


# ---------------------------------------------------------------- model autoscaler: horizontal

def horizontal(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, variant_id: str) -> list[Action]:
    variant, live = snapshot.variants[variant_id], snapshot.live_of(variant_id)
    replicas = live.replicas + live.unplaced
    recent = snapshot.demand.get(variant_id, ())
    demand, slo = scale_up_demand(live, recent, config), live.demand_slo_ms
    thr = replica_throughput(variant, slo, config.slo_batch_factor)
    delta = scale_delta(variant, demand, replicas, config, slo)
    if delta > 0:
        useful = target_utilization(variant, config, slo)
        # INFaaS adds ceil(delta / thr); SLO-first, the fewest that leave no delta at the target utilization.
        add = math.ceil(delta / (thr * (useful if config.slo_first else 1.0)) - 1e-9)
        load = demand / ((replicas + add) * thr)
        reason = (f"demand {demand:.1f} rows/s > {replicas} x {thr:.1f} rows/s at {useful:.0%} utilization "
                  f"(delta {delta:.1f}): +{add}")
        return [_add_replica(ledger, variant, load, replicas + i, reason) for i in range(add)]
    if live.status == INTERFERED and live.loading == 0 and live.unplaced == 0:
        # Moved to free resources if some worker has them; otherwise the VM autoscaler's rule.
        worker = ledger.place(variant, 1.0, exclude=live.workers, want=False)
        if worker:
            reason = f"interfered (avg latency {live.avg_latency_ms:.1f} ms): a replica on {worker}, which has room"
            return [Action(ADD_REPLICA, reason, variant_id, worker_id=worker, hardware=variant.hardware,
                           from_count=replicas, to_count=replicas + 1)]
    waited = snapshot.at_ms - live.low_since_ms
    # SLO-first: hold a minute low (capacity removed is needed again seconds later otherwise), and one
    # action at a time: nothing is removed while an addition is still loading or waiting for a worker.
    hold_ms = config.scale_down_hold_s * 1000 if config.slo_first else variant.load_ms
    settling = config.slo_first and (live.loading > 0 or live.unplaced > 0)
    if (live.low_since_ms and waited >= hold_ms and not settling
            and variant_is_low(variant, live, config, recent)):
        worker = _busiest_host(snapshot, live) if live.unplaced == 0 else None
        reason = (f"demand {demand:.1f} rows/s fits {replicas - 1} replicas, low for {waited / 1000:.1f} s "
                  f">= {hold_ms / 1000:.1f} s")
        return [Action(REMOVE_REPLICA, reason, variant_id, worker_id=worker, hardware=variant.hardware,
                       from_count=replicas, to_count=replicas - 1)]
    return []


def _add_replica(ledger: Ledger, variant: Variant, load: float, before: int, reason: str,
                 exclude: tuple[str, ...] = ()) -> Action:
    worker = ledger.place(variant, load, exclude)
    where = f" on {worker}" if worker else f"; no {variant.hardware} worker has room: on the next one"
    return Action(ADD_REPLICA, reason + where, variant.variant_id, worker_id=worker, hardware=variant.hardware,
                  from_count=before, to_count=before + 1)


def _busiest_host(snapshot: Snapshot, live: VariantLive) -> str | None:
    hosts = [w for w in live.workers if w in snapshot.workers]
    return max(hosts, key=lambda w: (snapshot.workers[w].utilization, w), default=None)


# ---------------------------------------------------------------- GPU co-location

def colocation(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, variant_id: str) -> list[Action]:
    """SLO-first GPU co-location (`execution.light`), one step at a time, each once the last one's replica
    serves (nothing loading or waiting for a worker):
      * a light variant alone on a GPU, loaded for `scale_down_hold_s`, gets a replica on a GPU it can share
        (`Ledger.place`, fullest first; only onto one that reserves more than its own, or as much and sorts
        first, so that two light variants alone never swap);
      * once that serves, its replica on the GPU it had alone goes (the VM autoscaler removes the empty GPU);
      * a variant no longer light with a replica on a shared GPU: that replica goes once its other replicas
        carry its demand; before that, it gets a replica on a GPU of its own (the load rose: the variants it
        shares with must not wait for its batches)."""
    variant, live = snapshot.variants[variant_id], snapshot.live_of(variant_id)
    if (not config.slo_first or not 0 < config.gpu_colocation_share < 1 or hardware_of(variant, config).kind == "cpu"
            or live.loading or live.unplaced or live.moving_to):
        return []
    hosts = [w for w in live.workers if w in snapshot.workers]
    shared = [w for w in hosts if any(n > 0 and v != variant_id for v, n in snapshot.workers[w].variants.items())]
    alone = [w for w in hosts if w not in shared]
    replicas = live.replicas
    if execution.light(snapshot, variant, config):
        if shared and alone:
            return [Action(REMOVE_REPLICA, f"light: it serves on {shared[0]}, shared; the GPU it had alone goes",
                           variant_id, worker_id=alone[0], hardware=variant.hardware, from_count=replicas,
                           to_count=replicas - 1)]
        if (len(alone) != 1 or shared or replicas != 1 or not execution.light(snapshot, variant, config, entering=True)
                or snapshot.at_ms - live.loaded_at_ms < config.scale_down_hold_s * 1000):
            return []
        own = alone[0]
        mine = ledger.reserved.get(own, 0.0)
        exclude = tuple(w for w in ledger.workers if w == own or (ledger.reserved.get(w, 0.0), own) < (mine, w))
        target = ledger.place(variant, 0.0, exclude=exclude, want=False, shared_only=True)
        if target is None:
            return []
        return [Action(ADD_REPLICA, f"light (its peak needs <= {config.gpu_colocation_share * execution.ENTER_SHARE:g} of a replica): "
                       f"co-located on {target}, which it can share", variant_id, worker_id=target,
                       hardware=variant.hardware, from_count=replicas, to_count=replicas + 1)]
    if not shared:
        return []
    slo = live.demand_slo_ms
    recent = snapshot.demand.get(variant_id, ())
    demand = max(scale_up_demand(live, recent, config),
                 recent_peak_rows(live, recent, config)
                 + noise_headroom_rows(live.qps, live.avg_rows, config))
    on_own = replicas - sum(snapshot.workers[w].variants.get(variant_id, 0) for w in shared)
    if on_own >= replicas_for(variant, demand, config, slo):
        return [Action(REMOVE_REPLICA, f"no longer light ({demand:.1f} rows/s): its {on_own} replica(s) on GPUs of "
                       f"their own carry it; the one on shared {shared[0]} goes", variant_id, worker_id=shared[0],
                       hardware=variant.hardware, from_count=replicas, to_count=replicas - 1)]
    return [_add_replica(ledger, variant, 1.0, replicas, f"no longer light ({demand:.1f} rows/s): a replica on a "
                         f"GPU of its own, off shared {shared[0]}", exclude=tuple(shared))]


# ---------------------------------------------------------------- model autoscaler: vertical

PER_SLO_KEPT = 64  # SLOs whose columns `TaskArrays.throughput` keeps per task


@dataclass(frozen=True)
class TaskArrays:
    """Per-task columns for the vertical search (profiles only: memoized across snapshots)."""
    variants: tuple[Variant, ...]
    position: dict[str, int]
    accuracy: np.ndarray
    batch: np.ndarray
    latency: np.ndarray  # latency.shape = (variants, largest batch): latency_at(b) at [i, b-1], inf past the batch
    load_useful: np.ndarray  # 1 - w * load_ms, floored like capacity.target_utilization (INFaaS's rule)
    price: np.ndarray
    public: np.ndarray
    app: np.ndarray
    config: PolicyConfig
    _per_slo: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, variants: list[Variant], config: PolicyConfig) -> TaskArrays:
        ordered = tuple(sorted(variants, key=lambda v: v.variant_id))
        column = lambda f: np.array([f(v) for v in ordered], dtype=np.float64)  # noqa: E731
        widest = max((v.batch_size for v in ordered), default=1)
        latency = np.full((len(ordered), widest), np.inf)
        for i, v in enumerate(ordered):
            latency[i, :v.batch_size] = [v.latency_at(b) for b in range(1, v.batch_size + 1)]
        return cls(ordered, {v.variant_id: i for i, v in enumerate(ordered)},
                   column(lambda v: v.accuracy), column(lambda v: v.batch_size), latency,
                   column(lambda v: max(1.0 - config.load_latency_weight * v.load_ms, MIN_USEFUL_SHARE)),
                   column(lambda v: replica_price_per_hour(v, config)),
                   np.array([v.public for v in ordered], dtype=bool), np.array([v.app_id for v in ordered]), config)

    def throughput(self, slo_ms: float, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorized `capacity.usable_batch`, `replica_throughput` and `target_utilization` over the
        task's variants (memoized per SLO: the profiles do not change)."""
        cached = self._per_slo.get((slo_ms, factor))
        if cached is None:
            usable = (factor * self.latency <= slo_ms).sum(axis=1)
            batch = np.maximum(usable, 1)
            latency = self.latency[np.arange(len(batch)), batch - 1]
            if self.config.slo_first:
                low, high = self.config.target_util_min, self.config.target_util_max
                with np.errstate(divide="ignore", invalid="ignore"):
                    useful = np.clip(1.0 - latency / slo_ms, low, high) if slo_ms > 0 else np.full(len(batch), low)
                useful = np.where(latency > 0, useful, low)
            else:
                useful = self.load_useful
            with np.errstate(divide="ignore"):
                cached = usable, np.where(latency > 0, batch * 1000.0 / latency, np.inf), useful
            if len(self._per_slo) >= PER_SLO_KEPT:  # SLOs are measured floats: keep the newest, not every one
                del self._per_slo[next(iter(self._per_slo))]
            self._per_slo[(slo_ms, factor)] = cached
        return cached

    def serving_cost(self, demand: float, throughput: np.ndarray, useful: np.ndarray) -> np.ndarray:
        """Vectorized `capacity.serving_cost_per_hour`."""
        needed = np.maximum(1.0, np.ceil(demand / (throughput * useful) - 1e-9))
        return needed * self.price


def task_arrays(snapshot: Snapshot, task: str, config: PolicyConfig) -> TaskArrays:
    key = ("static", "scaling", task, config.load_latency_weight, config.hardware_catalog, config.slo_first,
           config.target_util_min, config.target_util_max)
    arrays = snapshot._memo.get(key)
    if arrays is None:
        arrays = TaskArrays.build([v for v in snapshot.variants.values() if v.task == task], config)
        snapshot._memo[key] = arrays
    return arrays


def vertical(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, variant_id: str) -> list[Action]:
    variant, live = snapshot.variants[variant_id], snapshot.live_of(variant_id)
    replicas = live.replicas + live.unplaced
    settled = (snapshot.at_ms - live.loaded_at_ms >= variant.load_ms and live.loading == 0 and live.unplaced == 0
               and not live.moving_to)
    if live.status == INACTIVE or live.qps <= 0 or not settled or live.named:
        return []  # queries that named this variant are never moved to another
    slo = live.demand_slo_ms or config.slo_batch_factor * variant.latency_at(variant.batch_size)
    recent = snapshot.demand.get(variant_id, ())
    now = scale_up_demand(live, recent, config)
    scaling_up = scale_delta(variant, now, replicas, config, slo) > 0
    if config.slo_first and not scaling_up:
        return downgrade(snapshot, config, ledger, variant_id)
    demand = now if scaling_up else recent_peak_rows(live, recent, config)
    capacity = replicas * replica_throughput(variant, slo, config.slo_batch_factor)
    if not scaling_up and demand > config.downgrade_load_share * capacity:
        return []  # the load has not fallen: nothing to downgrade
    unfit = usable_batch(variant, slo, config.slo_batch_factor) == 0
    # SLO-first, the strictest accuracy of the window, as DOWNGRADE judges it: the last report's is that of the
    # few queries of one second, and a move judged on it leaves the strictest class with no variant.
    accuracy = live.strictest_accuracy if config.slo_first else 0.0
    target = _cheapest_target(snapshot, config, variant, live, demand, slo, faster_only=scaling_up and not unfit,
                              accuracy=accuracy)
    if target is None:
        return []
    stay = replicas_for(variant, demand, config, slo) * replica_price_per_hour(variant, config)
    count = replicas_for(target, demand, config, slo)
    move = count * replica_price_per_hour(target, config)
    if unfit and scaling_up:
        why = f"{variant_id} cannot meet the {slo:g} ms SLO of its traffic under load"
    elif stay > config.upgrade_cost_ratio * move:
        why = f"staying costs ${stay:.3f}/h > {config.upgrade_cost_ratio:g} x ${move:.3f}/h"
    else:
        return []
    kind = UPGRADE_VARIANT if scaling_up else DOWNGRADE_VARIANT
    load = demand / (count * replica_throughput(target, slo, config.slo_batch_factor))
    reason = f"{demand:.1f} rows/s: {why}; moving to {count} x {target.variant_id} (${move:.3f}/h)"
    first = ledger.place(target, load)
    actions = [Action(kind, reason, variant_id, target.variant_id, worker_id=first, hardware=target.hardware,
                      from_count=replicas, to_count=count)]
    for i in range(1, count):
        actions.append(_add_replica(ledger, target, load, i, f"part of the move from {variant_id}"))
    return actions


def downgrade(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, variant_id: str) -> list[Action]:
    """SLO-first DOWNGRADE: move a settled variant's traffic to a cheaper way of serving it, judged on the
    peak of the last `peak_window_s` (the load has fallen for that long, not for a second):
      * into a loaded variant of the task that meets the traffic's accuracy and SLO under load and has
        room for both peaks on the replicas it has, when staying costs more than `upgrade_cost_ratio` x
        the share of those replicas the traffic takes (a lightly used replica that each class of a task
        would keep loaded otherwise; not a CPU class onto a dearer GPU), and only off replicas dearer
        than the ratio x the task's cheapest (a GPU: one CPU replica is not worth undoing a split), or else
      * onto the cheapest variant not loaded that meets them, when staying costs more than
        `upgrade_cost_ratio` x moving in whole replicas, and the target is cheaper per row too.
    Hysteresis, so that it does not flap: the variant has served for `scale_down_hold_s` first; the
    peak, not the level, is priced (the upgrade rule prices the level, and only while scaling up, on
    the same ratio: moving back needs the load to grow by the ratio squared); a merge needs room for
    both peaks without a new replica, so the merged variant is not overloaded by the traffic it took."""
    variant, live = snapshot.variants[variant_id], snapshot.live_of(variant_id)
    if snapshot.at_ms - live.loaded_at_ms < config.scale_down_hold_s * 1000:
        return []
    # The strictest demands of the window: a class that sent nothing this second still needs its accuracy.
    slo = live.strictest_slo_ms or config.slo_batch_factor * variant.latency_at(variant.batch_size)
    accuracy = live.strictest_accuracy or variant.accuracy
    recent = snapshot.demand.get(variant_id, ())
    demand = recent_peak_rows(live, recent, config)
    replicas = live.replicas + live.unplaced
    stay = replicas_for(variant, demand, config, slo) * replica_price_per_hour(variant, config)
    # Merges are for replicas on dear hardware (a GPU that each class would keep); on the task's cheapest
    # hardware one replica is worth less than the split it would undo (selection's `_split_off`).
    cheapest = float(task_arrays(snapshot, variant.task, config).price.min())
    dear = replica_price_per_hour(variant, config) > config.upgrade_cost_ratio * cheapest
    merge = _merge_target(snapshot, config, variant, live, demand, slo, accuracy) if dear else None
    # Worth it when staying costs more than the ratio x the share of the target's replicas the traffic takes.
    if merge is not None and stay > config.upgrade_cost_ratio * merge[1].share_cost:
        target, total = merge
        reason = (f"peak {demand:.1f} rows/s fits the spare capacity of {target.variant_id} "
                  f"({total.replicas} replicas carry both peaks; its share ${total.share_cost:.3f}/h, staying "
                  f"${stay:.3f}/h): one loaded variant fewer")
        first = ledger.place(target, 1.0)
        return [Action(DOWNGRADE_VARIANT, reason, variant_id, target.variant_id, worker_id=first,
                       hardware=target.hardware, from_count=replicas, to_count=1)]
    cheaper = _cheapest_target(snapshot, config, variant, live, demand, slo, faster_only=False, accuracy=accuracy)
    if cheaper is None:
        return []
    count = replicas_for(cheaper, demand, config, slo)
    move = count * replica_price_per_hour(cheaper, config)
    if stay <= config.upgrade_cost_ratio * move or _row_cost(cheaper, config, slo) >= _row_cost(variant, config, slo):
        return []  # not the ratio cheaper in whole replicas, or no cheaper per row (rounding alone: it would flap)
    load = demand / (count * replica_throughput(cheaper, slo, config.slo_batch_factor))
    reason = (f"peak {demand:.1f} rows/s over {peak_windows(config)} s: staying costs ${stay:.3f}/h > "
              f"{config.upgrade_cost_ratio:g} x ${move:.3f}/h; moving to {count} x {cheaper.variant_id}")
    actions = [Action(DOWNGRADE_VARIANT, reason, variant_id, cheaper.variant_id, worker_id=ledger.place(cheaper, load),
                      hardware=cheaper.hardware, from_count=replicas, to_count=count)]
    return actions + [_add_replica(ledger, cheaper, load, i, f"part of the move from {variant_id}")
                      for i in range(1, count)]


def _row_cost(variant: Variant, config: PolicyConfig, slo: float) -> float:
    """$/h per row/s at the target utilization (fluid capacity)."""
    per_replica = replica_throughput(variant, slo, config.slo_batch_factor) * target_utilization(variant, config, slo)
    return replica_price_per_hour(variant, config) / per_replica if per_replica > 0 else math.inf


@dataclass(frozen=True)
class _Merged:
    replicas: int  # the target's replicas now, which carry both peaks
    share_cost: float  # $/h of the share of those replicas the moved traffic takes (at the target utilization)


def _merge_target(snapshot: Snapshot, config: PolicyConfig, variant: Variant, live: VariantLive, demand: float,
                  slo: float, accuracy: float) -> tuple[Variant, _Merged] | None:
    """The loaded variant of the task, ACTIVE and settled, that meets the traffic's accuracy and SLO under
    load and whose replicas carry its own peak and `demand` at the target utilization; the one where
    the moved traffic's share costs least (then the most replicas: the most room)."""
    best: tuple[tuple[float, int, str], Variant, _Merged] | None = None
    for other_id, other in snapshot.live.items():
        target = snapshot.variants.get(other_id)
        if (target is None or other_id == variant.variant_id or target.task != variant.task
                or other.status != ACTIVE or other.loading or other.unplaced or other.moving_to
                or other.replicas <= 0 or target.accuracy < accuracy or target.batch_size < live.avg_rows
                or not (target.public or target.app_id == variant.app_id)):
            continue
        tightest = min(slo, other.strictest_slo_ms) if other.strictest_slo_ms > 0 else slo
        if usable_batch(target, tightest, config.slo_batch_factor) == 0:
            continue
        own = recent_peak_rows(other, snapshot.demand.get(other_id, ()), config)
        if replicas_for(target, own + demand, config, tightest) > other.replicas:
            continue  # no room for both peaks: merging would need a replica, or overload it
        share = demand / (replica_throughput(target, tightest, config.slo_batch_factor)
                          * target_utilization(target, config, tightest))
        cost = share * replica_price_per_hour(target, config)
        key = (cost, -other.replicas, other_id)
        if best is None or key < best[0]:
            best = (key, target, _Merged(other.replicas, cost))
    return (best[1], best[2]) if best else None


def _cheapest_target(snapshot: Snapshot, config: PolicyConfig, variant: Variant, live: VariantLive,
                     demand: float, slo: float, faster_only: bool, accuracy: float = 0.0) -> Variant | None:
    """The cheapest variant that is not loaded and meets the traffic's accuracy (`accuracy`, else the last
    report's demand) and SLO under load."""
    arrays = task_arrays(snapshot, variant.task, config)
    accuracy = accuracy or live.demand_accuracy or variant.accuracy
    usable, throughput, useful = arrays.throughput(slo, config.slo_batch_factor)
    ok = ((arrays.accuracy >= accuracy) & (arrays.batch >= live.avg_rows) & (usable >= 1)
          & np.isfinite(throughput) & (arrays.public | (arrays.app == variant.app_id)))
    if faster_only:
        ok &= throughput > replica_throughput(variant, slo, config.slo_batch_factor)
    for other, state in snapshot.live.items():  # loaded ones get traffic from the dispatcher already
        position = arrays.position.get(other)
        if position is not None and state.replicas + state.unplaced > 0:
            ok[position] = False
    if not ok.any():
        return None
    cost = np.where(ok, arrays.serving_cost(demand, throughput, useful), np.inf)
    best = np.flatnonzero(cost == cost.min())
    return arrays.variants[int(best[np.argmin(arrays.latency[best, 0])])]


# ---------------------------------------------------------------- unloading idle variants

def unload_idle(snapshot: Snapshot, config: PolicyConfig, exclude: AbstractSet[str] = frozenset()) -> list[Action]:
    actions = []
    for variant_id, live in sorted(snapshot.live.items()):
        if variant_id in exclude or live.replicas + live.unplaced == 0 or live.qps > 0 or live.queue_len > 0:
            continue
        since = max(live.last_used_ms, live.loaded_at_ms)
        if since <= 0:
            continue  # never seen used nor loaded: its idle time is unknown, not infinite
        idle_ms = snapshot.at_ms - since
        if idle_ms >= config.unload_idle_s * 1000:
            actions.append(Action(UNLOAD_VARIANT, f"idle for {idle_ms / 1000:.0f} s >= {config.unload_idle_s:g} s",
                                  variant_id, hardware=_hardware(snapshot, variant_id),
                                  from_count=live.replicas + live.unplaced, to_count=0))
    return actions


def _hardware(snapshot: Snapshot, variant_id: str) -> str | None:
    variant = snapshot.variants.get(variant_id)
    return variant.hardware if variant else None


# ---------------------------------------------------------------- VM autoscaler

def workers(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, last_worker_action_ms: WorkerActionTimes,
            keep: AbstractSet[str] = frozenset()) -> list[Action]:
    """Worker actions. INFaaS: after one back-off for all, additions (per kind that needs them), else one
    removal. SLO-first: per hardware kind (`slo_first_workers`)."""
    if config.slo_first:
        return slo_first_workers(snapshot, config, ledger, last_worker_action_ms)
    if not isinstance(last_worker_action_ms, int | None):
        last_worker_action_ms = max(last_worker_action_ms.values(), default=None)
    if last_worker_action_ms is not None and snapshot.at_ms - last_worker_action_ms < config.worker_backoff_s * 1000:
        return []
    total = len(snapshot.workers)
    wanted = _wanted(snapshot, config, ledger)
    added = []
    for kind in sorted({w.hardware for w in snapshot.workers.values()} | set(wanted)):
        action = _add_worker(snapshot, config, kind, wanted.get(kind, 0.0), config.max_workers - total)
        if action:
            added.append(action)
            total += action.to_count - action.from_count
    if added:
        return added
    return _remove_workers(snapshot, config, keep, total - config.min_workers)


def _wanted(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger) -> dict[str, float]:
    """Workers' worth of replicas, per hardware kind, that found no room (this decision's and earlier ones)."""
    wanted = dict(ledger.wanted)
    for variant_id, live in snapshot.live.items():
        if live.unplaced and variant_id in snapshot.variants:
            variant = snapshot.variants[variant_id]
            wanted[variant.hardware] = wanted.get(variant.hardware, 0.0) + live.unplaced * replica_share(variant, config)
    return wanted


def backed_off(snapshot: Snapshot, config: PolicyConfig, times: WorkerActionTimes, kind: str, direction: str) -> bool:
    """Whether a worker action of this kind and direction waits (one time for all: INFaaS's back-off)."""
    last = times if isinstance(times, int | None) else times.get((kind, direction))
    return last is not None and snapshot.at_ms - last < config.worker_backoff_s * 1000


def slo_first_workers(snapshot: Snapshot, config: PolicyConfig, ledger: Ledger, times: WorkerActionTimes) -> list[Action]:
    """Per hardware kind: workers for replicas that found no room at once (they are decided capacity, and a
    lost worker's replicas come back this way: no back-off), and a warm pool of idle workers
    (`warm_pool_size`); only empty workers beyond the pool, low for the usual time, leave (backed off per
    kind). Never outside [min_workers, max_workers].

    Unlike INFaaS's VM autoscaler, a kind whose workers all run hot gets no worker of its own: the replica
    rules decide the capacity, and a worker none of them places anything on only costs. One GPU serving
    one variant reads "hot" whenever a query waits at the reading; it started a second GPU every minute,
    billed and removed empty (simulated, gpt2 alone, low load, seed 3: $2.47 against static's $1.39; $1.81
    without; the five workloads of the report: within 0.3%)."""
    total = len(snapshot.workers)
    wanted = _wanted(snapshot, config, ledger)
    kinds = sorted({w.hardware for w in snapshot.workers.values()} | set(wanted))
    actions = []
    for kind in kinds:
        of_kind = [w for w in snapshot.workers.values() if w.hardware == kind]
        idle = sum(1 for w in of_kind if ledger.hosted.get(w.worker_id, 0) == 0)
        pool = warm_pool_size(snapshot, config, kind, in_use=len(of_kind) - idle)
        count, reasons = math.ceil(wanted.get(kind, 0.0) - 1e-9), []
        if count:
            reasons.append(f"replicas worth {wanted.get(kind, 0.0):.1f} {kind} worker(s) found no room")
        if idle < pool:
            count, reasons = count + pool - idle, reasons + [f"warm pool of {pool} idle, {idle} now"]
        count = min(count, config.max_workers - total)
        if count > 0:
            actions.append(Action(ADD_WORKER, "; ".join(reasons), hardware=kind, from_count=len(of_kind),
                                  to_count=len(of_kind) + count))
            total += count
        elif not backed_off(snapshot, config, times, kind, DOWN):
            removals = _remove_idle(snapshot, config, of_kind, idle - pool, total - config.min_workers)
            actions += removals
            total -= len(removals)
    return actions


def _remove_idle(snapshot: Snapshot, config: PolicyConfig, of_kind: list[WorkerLive], spare: int,
                 room: int) -> list[Action]:
    low_for_ms = config.worker_low_readings * config.worker_check_s * 1000
    empty = sorted((w for w in of_kind if w.ready and not any(w.variants.values()) and w.low_since_ms
                    and snapshot.at_ms - w.low_since_ms >= low_for_ms), key=lambda w: (w.low_since_ms, w.worker_id))
    chosen = empty[:max(min(spare, room), 0)]
    return [Action(REMOVE_WORKER, f"empty and low for {(snapshot.at_ms - w.low_since_ms) / 1000:.0f} s "
                   f"(>= {low_for_ms / 1000:.0f} s), beyond the warm pool", worker_id=w.worker_id, hardware=w.hardware,
                   from_count=len(of_kind) - i, to_count=len(of_kind) - i - 1) for i, w in enumerate(chosen)]


def warm_pool_size(snapshot: Snapshot, config: PolicyConfig, kind: str, in_use: int) -> int:
    """Idle workers to keep of this kind: `warm_pool_sigmas` standard deviations of the workers its
    variants needed (demand at the target utilization) over the last `peak_window_s` windows, so that
    a rise within that variability finds a started worker instead of waiting 20-30 s for one; at most
    `warm_pool_share` of the `in_use` workers (at least one); none for a kind outside `warm_pool_kinds`."""
    if kind not in config.warm_pool_kinds:
        return 0
    windows = peak_windows(config)
    needed = np.zeros(windows)
    for variant_id, live in snapshot.live.items():
        variant = snapshot.variants.get(variant_id)
        if variant is None or variant.hardware != kind or live.replicas + live.unplaced == 0:
            continue
        series = np.asarray((*snapshot.demand.get(variant_id, ()), live.qps)[-windows:], dtype=float)
        slo = live.demand_slo_ms
        per_worker = (replica_throughput(variant, slo, config.slo_batch_factor)
                      * target_utilization(variant, config, slo) / replica_share(variant, config))
        needed[windows - len(series):] += series * live.avg_rows / per_worker
    cap = min(max(math.ceil(config.warm_pool_share * in_use - 1e-9), 1), config.warm_pool_max)
    return min(round(config.warm_pool_sigmas * float(needed.std())), cap)  # noise alone keeps no idle worker


def _add_worker(snapshot: Snapshot, config: PolicyConfig, kind: str, wanted: float, room: int) -> Action | None:
    """One worker when the kind runs hot; as many as the replicas that found no room fill, if more."""
    of_kind = [w for w in snapshot.workers.values() if w.hardware == kind]
    starting = any(not w.ready for w in of_kind)  # judge utilization again once they are up
    reason = "" if starting else _hot(snapshot, config, of_kind)
    count = 1 if reason else 0
    if wanted > 1e-9:
        count = max(count, math.ceil(wanted - 1e-9))
        reason = f"replicas worth {wanted:.1f} {kind} worker(s) found no room" + (f"; {reason}" if reason else "")
    count = min(count, room)
    if count <= 0:
        return None
    return Action(ADD_WORKER, reason, hardware=kind, from_count=len(of_kind), to_count=len(of_kind) + count)


def _hot(snapshot: Snapshot, config: PolicyConfig, of_kind: list[WorkerLive]) -> str:
    if not of_kind:
        return ""
    if all(w.utilization > config.worker_util_high for w in of_kind):
        return f"all {len(of_kind)} workers above {config.worker_util_high:.0%} utilization"
    statuses = [[snapshot.live_of(v).status for v, n in w.variants.items() if n > 0] for w in of_kind]
    if all(s and all(x == INTERFERED for x in s) for s in statuses):
        return "every variant on every worker is interfered"
    overloaded = sum(1 for s in statuses if OVERLOADED in s)
    if overloaded > config.worker_overloaded_share * len(of_kind):
        return f"{overloaded} of {len(of_kind)} workers host an overloaded variant"
    return ""


def _remove_workers(snapshot: Snapshot, config: PolicyConfig, keep: AbstractSet[str], spare: int) -> list[Action]:
    """The least utilized worker that has been low long enough; every such worker if they host nothing."""
    low_for_ms = config.worker_low_readings * config.worker_check_s * 1000
    candidates = sorted((w for w in snapshot.workers.values()
                         if w.ready and w.low_since_ms and snapshot.at_ms - w.low_since_ms >= low_for_ms
                         and _removable(snapshot, w, keep, peak_windows(config))),
                        key=lambda w: (w.utilization, w.worker_id))
    empty = [w for w in candidates if not any(w.variants.values())]
    chosen = (empty or candidates[:1])[:max(spare, 0)]
    of_kind = Counter(w.hardware for w in snapshot.workers.values())
    actions = []
    for worker in chosen:
        what = "empty" if worker in empty else "the least utilized"
        reason = (f"utilization {worker.utilization:.0%} low for {(snapshot.at_ms - worker.low_since_ms) / 1000:.0f} s "
                  f"(>= {low_for_ms / 1000:.0f} s); {what}")
        actions.append(Action(REMOVE_WORKER, reason, worker_id=worker.worker_id, hardware=worker.hardware,
                              from_count=of_kind[worker.hardware], to_count=of_kind[worker.hardware] - 1))
        of_kind[worker.hardware] -= 1
    return actions


def _removable(snapshot: Snapshot, worker: WorkerLive, keep: AbstractSet[str], windows: int) -> bool:
    """It holds no last replica of a variant that has traffic, now or in the recent windows (or that must
    stay loaded)."""
    for variant_id, count in worker.variants.items():
        live = snapshot.live_of(variant_id)
        sole = count > 0 and live.replicas <= count
        busy = live.qps > 0 or live.queue_len > 0 or any(snapshot.demand.get(variant_id, ())[-windows:])
        if sole and (busy or variant_id in keep):
            return False
    return True
