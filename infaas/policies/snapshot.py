"""The immutable view of the system that every policy decides on.

Policies are pure functions of a `Snapshot` (plus a request or a config) returning a decision:
no I/O, no clocks (the time is `snapshot.at_ms`). The live services and the simulator build
snapshots from what they observe and call the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from ..catalog import Variant

INACTIVE, ACTIVE, OVERLOADED, INTERFERED = "INACTIVE", "ACTIVE", "OVERLOADED", "INTERFERED"
STATUSES = (INACTIVE, ACTIVE, OVERLOADED, INTERFERED)
# The dispatcher's own view only: a variant whose traffic the scaler moved away; it gets no new
# queries while its queue drains (selection skips every status but ACTIVE/INACTIVE/OVERLOADED).
RETIRING = "RETIRING"


@dataclass(frozen=True, slots=True)
class VariantLive:
    """Dynamic state of one variant, as the load monitor last saw it."""
    status: str = INACTIVE
    replicas: int = 0
    workers: tuple[str, ...] = ()
    qps: float = 0.0
    queue_len: int = 0
    avg_latency_ms: float = 0.0
    loaded_at_ms: int = 0  # when it became active (0: never)
    last_used_ms: int = 0  # last time it served a query
    low_since_ms: int = 0  # since when its load has been low enough to lose a replica (0: not low)
    loading: int = 0  # of `replicas`, those still loading (placed, not yet serving)
    unplaced: int = 0  # replicas decided but waiting for a worker of its hardware (not in `replicas`)
    demand_accuracy: float = 0.0  # highest accuracy demanded by the queries it served recently (0: unknown)
    demand_slo_ms: float = 0.0  # tightest latency SLO among them (0: unknown)
    avg_rows: float = 1.0  # rows per query (INFaaS's "actual batch"): demand in rows/s is qps * avg_rows
    moving_to: str = ""  # an upgrade/downgrade target being loaded; this variant retires once it serves
    batch_ms: float = 0.0  # a full batch's execution time as its replicas measured it (0: not measured)
    # How much later than estimated its recent answers came (95th percentile, >= 0; 0: not measured): the
    # margin a query needs to be admitted to its queue (`selection.admission_margin_ms`).
    overrun_ms: float = 0.0
    named: bool = False  # queries named this variant (model-/variant-specific): vertical scaling never moves them
    # The strictest demands over the last `peak_window_s` (monitoring.track carries them; 0: unknown): one
    # report's are those of the few queries of a second, and a downgrade judged on them drops a class.
    window_accuracy: float = 0.0
    window_slo_ms: float = 0.0
    window_since_ms: int = 0  # when the window's strictest demands were seen

    @property
    def strictest_accuracy(self) -> float:
        return max(self.window_accuracy, self.demand_accuracy)

    @property
    def strictest_slo_ms(self) -> float:
        slos = [s for s in (self.window_slo_ms, self.demand_slo_ms) if s > 0]
        return min(slos) if slos else 0.0

    @property
    def loaded(self) -> bool:
        return self.status != INACTIVE and self.replicas > 0

    @property
    def serving_replicas(self) -> int:
        """Replicas that serve now (placed and done loading)."""
        return self.replicas - self.loading


@dataclass(frozen=True, slots=True)
class WorkerLive:
    """One worker (a VM in INFaaS's terms) and what it hosts."""
    worker_id: str
    hardware: str  # "cpu" or a GPU kind such as "gpu-t4"
    cpu_util: float = 0.0  # 0..1
    gpu_util: float = 0.0
    memory_mb: float = 0.0
    memory_budget_mb: float = 0.0
    variants: Mapping[str, int] = field(default_factory=dict)  # variant id -> replicas hosted here
    started_at_ms: int = 0
    ready: bool = True  # False while starting (a new VM takes 20-30 s)
    low_since_ms: int = 0  # since when its utilization has been low (0: not low)

    @property
    def utilization(self) -> float:
        return self.cpu_util if self.hardware == "cpu" else max(self.gpu_util, self.cpu_util)

    @property
    def free_memory_mb(self) -> float:
        return max(self.memory_budget_mb - self.memory_mb, 0.0)


@dataclass(frozen=True)
class Snapshot:
    """Profiles + live variant state + workers, at one instant."""
    variants: Mapping[str, Variant]
    live: Mapping[str, VariantLive] = field(default_factory=dict)
    workers: Mapping[str, WorkerLive] = field(default_factory=dict)
    at_ms: int = 0
    # Demand per variant over recent windows, oldest first (queries/s), for the scaling policies.
    demand: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # Memo of derived per-task indices (see selection.py); a cache of pure functions of the above.
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def live_of(self, variant_id: str) -> VariantLive:
        return self.live.get(variant_id) or _NOT_LOADED

    def with_changes(self, **changes: Unpack[SnapshotChanges]) -> Snapshot:
        """A new snapshot; derived indices are rebuilt lazily (profiles are shared)."""
        unknown = changes.keys() - SnapshotChanges.__optional_keys__
        if unknown:
            raise TypeError(f"with_changes() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        variants = changes.get("variants", self.variants)
        memo = {}
        if variants is self.variants:
            memo = {k: v for k, v in self._memo.items() if k[0] == "static"}  # profile-only indices survive
        return Snapshot(variants, live=changes.get("live", self.live), workers=changes.get("workers", self.workers),
                        at_ms=changes.get("at_ms", self.at_ms), demand=changes.get("demand", self.demand),
                        _memo=memo)


class SnapshotChanges(TypedDict, total=False):
    """The fields that `Snapshot.with_changes` may replace (all but the memo)."""
    variants: Mapping[str, Variant]
    live: Mapping[str, VariantLive]
    workers: Mapping[str, WorkerLive]
    at_ms: int
    demand: Mapping[str, tuple[float, ...]]


_NOT_LOADED = VariantLive()


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Thresholds of the monitoring and scaling rules, with INFaaS's published defaults."""
    # Interference detection (worker monitoring, every second).
    cpu_interference_latency_factor: float = 2.5  # avg_lat > k * profiled_lat
    cpu_interference_qps_factor: float = 0.5  # and qps > q * 1000 / profiled_lat
    gpu_interference_latency_factor: float = 1.5
    gpu_interference_qps_factor: float = 0.3
    cpu_interference_clear_factor: float = 1.5
    gpu_interference_clear_factor: float = 1.25
    gpu_fast_latency_ms: float = 10.0  # GPU variants faster than this use k = min(cap, numerator / lat)
    gpu_fast_factor_numerator_ms: float = 15.0
    gpu_fast_factor_cap: float = 5.0
    overload_queue_factor: float = 0.8  # queue > 0.8 * replicas * 1000 / profiled_lat
    # SLO-first rules (infaas; the baselines keep INFaaS's published autoscaler, `slo_first=False`).
    slo_first: bool = True
    # Target utilization of a variant's replicas from its SLO slack: 1 - latency(batch)/SLO, within these
    # bounds (replaces the load-latency headroom; see capacity.target_utilization).
    target_util_min: float = 0.5
    target_util_max: float = 0.85
    peak_window_s: float = 60.0  # scale-down judges the peak demand of this many 1 s windows
    scale_down_hold_s: float = 60.0  # and removes a replica only after being low this long
    # Scale-down's peak is of the means of this many consecutive windows: the single second in which a steady
    # Poisson stream peaks (about 2.3 sigmas above its rate in a minute) is noise, and had held replicas.
    # Simulated, seed 0, 1 -> 5: cost flat -13%, fluctuating-low -5%, -high -8%, bursty -4%, fluctuating-medium
    # +2%; violations up (flat 0.006 -> 0.011%, fluctuating-medium 0.86 -> 1.34%, bursty 0.025 -> 0.053%), all
    # still below static's. At 10, bursty's came within 3% of static's.
    peak_smooth_windows: int = 5
    trend_windows: int = 5  # scale-up extrapolates the arrival rate's trend over this many windows
    trend_horizon_s: float = 5.0  # this far ahead (about a load and a tick)
    # Replicas carry the demand plus this many standard deviations of its Poisson noise (sqrt of the
    # rate over a 1 s window), in scale-up and scale-down alike: steady headroom where noise matters.
    noise_headroom_sigmas: float = 1.5
    # Warm pool: idle workers kept per hardware kind, `warm_pool_sigmas` standard deviations of the
    # workers its variants needed over the peak window, at most `warm_pool_share` of the kind's workers
    # in use (at least one) and `warm_pool_max`; billed like any worker.
    warm_pool_sigmas: float = 3.0
    warm_pool_share: float = 0.15
    warm_pool_max: int = 20
    # Hardware kinds that keep a warm pool: CPU only. An idle GPU costs 17-48x an idle CPU worker (the hardware
    # catalogue); measured on the five workloads (issue 13), the GPU pool was 3-14% of infaas's cost for 0.00-0.05
    # points of violations.
    warm_pool_kinds: tuple[str, ...] = ("cpu",)
    # GPU co-location: a GPU variant whose peak demand needs at most this share of one replica's planned
    # capacity (a "light" one, `execution.light`) reserves only this share of a GPU, and shares the GPU with
    # other light variants whose SLOs allow waiting for each other's batches; >= 1: every GPU replica reserves
    # a whole GPU. Simulated, seed 0, against a whole GPU each: at 0.5, fluctuating-low's cost -10.6%,
    # fluctuating-high's -3.6%, bursty's -4.5% (violations 23, 101, 97 against 23, 102, 94); at 0.25 only
    # fluctuating-low's, -1.3%. Flat and fluctuating-medium do not change: the SLOs of their light variants
    # leave no time to wait for each other's batches.
    gpu_colocation_share: float = 0.5
    # Model autoscaler.
    load_latency_weight: float = 0.0002  # delta = qps*b - r*thr + 0.0002 * r * thr * load_lat
    queue_drain_s: float = 5.0  # a backlog counts as demand to be served within this time
    # Demand for scaling up: the mean of the last this many load windows (1: the latest, INFaaS's
    # current QPS; more windows smooth a dispatcher's one-second herding but react later). SLO-first
    # scale-up also takes the trend, never below the latest window, so there it smooths nothing: scaling
    # up on a 3 s mean instead missed more SLOs than static at bursts (simulated; stop 29's note).
    scale_up_windows: int = 1
    upgrade_cost_ratio: float = 1.5  # upgrade when replicating costs > 1.5x the faster variant
    # The load has fallen (a downgrade is considered) when the recent peak uses at most this share
    # of the replicas' capacity; the downgrade itself needs the same cost ratio.
    downgrade_load_share: float = 0.5
    unload_idle_s: float = 60.0
    # A variant meets an SLO under load when this x latency(batch) <= SLO: a query may wait for the
    # batch in service, then run in its own.
    slo_batch_factor: float = 2.0
    # VM autoscaler.
    worker_util_high: float = 0.8
    worker_util_low_cpu: float = 0.3
    worker_util_low_gpu: float = 0.08
    worker_low_readings: int = 15
    worker_overloaded_share: float = 0.8
    worker_backoff_s: float = 30.0  # per hardware kind and direction (slo_first), else for every worker action
    min_workers: int = 1
    max_workers: int = 8
    worker_start_s: float = 25.0  # a new VM takes 20-30 s
    worker_check_s: float = 2.0  # the VM autoscaler's period: "low" lasts worker_low_readings of these
    # Offline work runs only below this CPU utilization and with nothing interfered.
    offline_cpu_threshold: float = 0.4
    # Prices and worker sizes: a hardware catalogue file (TOML); "" is the one shipped with infaas.
    hardware_catalog: str = ""
