"""A discrete-event simulator of the serving system, driven by the policies the live system runs.

Model (times in ms):
  * Control plane, every tick (`tick_ms`, 1 s like the load monitor): the monitor's view of the last
    tick becomes a `Snapshot` (states by `monitoring.classify`, low-since by `monitoring.track`);
    `scaling.decide` returns actions, which the executor below carries out. The dispatcher routes the
    tick's queries with `selection.select` on that snapshot: its decision for a request class
    (task, accuracy demand, SLO) is computed once per `route_ms` (250 ms) window and reused; after the
    tick's first window, on the queues the live dispatcher estimates between two reports
    (`selection.estimated_queue`), as the live dispatcher sees state refreshed about once a second. A
    class is decided again within a window when it had no variant, or when its variant's capacity is
    starting and its queue, each routed query joining it, would make the next query miss its SLO
    (`_Routing`), as the live dispatcher decides every query. A decision that names a variant that is not loaded loads it (on `load_on`,
    or on the next worker of its hardware), and the next decisions of the tick see it loaded, and its
    worker's units taken, as the live dispatcher's local belief does.
  * Data plane: each variant has one FIFO queue; each replica runs one batch at a time. A free
    replica takes the next batch of the queries that have arrived by the rule the live replicas apply
    (`batching.next_run`: up to the variant's batch size, no waiting for a batch to fill, and never
    more than the first one's deadline allows: `latency_at(n)`, the profile's linear model, must fit
    before it), and runs it in `latency_at(n)` x its worker's contention factor. Queries
    whose deadline has passed when a replica would start them are answered "deadline exceeded"
    without running, as the live workers do (they count as violations, not as served). A replica
    is placed where `execution.worker_for` puts it (none: it waits for a worker) and serves once
    loaded: `load_ms` after it is placed (after the worker is up, for a starting worker). Queries
    are not dropped otherwise: queued ones wait for a replica.
  * Workers start in 20-30 s (uniform, seeded). Contention: a worker has `worker_units` vCPUs (CPU)
    or one GPU; each replica uses its share while busy. The offered busy share of a worker over a
    tick (a backlogged replica counts as fully busy) is its utilization; above 1 it slows every
    batch on the worker by that factor in the next tick, which the monitor then sees as interference.
    A GPU runs one batch at a time: on a GPU shared by several replicas, a batch waits, with the chance
    that the others were busy in the last tick, for a uniform share of their mean batch (`_gpu_waits`).
  * A run's time varies around the profile's median as a lognormal whose tail is the profiled one
    (`service_spread`; `SimOptions.service_variance`).
  * Cost: every worker is billed per second it exists, starting or started, at the hardware's
    `worker_price_per_hour` (a CPU worker has `worker_units` vCPUs; a GPU worker is one GPU), and for
    at least `billing_minimum_s` (60 s, as EC2 bills) from its start.
Metrics cover queries arriving after the warm-up; cost covers the same window, up to the last arrival.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

from ..catalog import Variant
from ..policies import baselines, batching, execution, monitoring, scaling, selection
from ..policies.actions import (
    ADD_REPLICA,
    ADD_WORKER,
    DOWNGRADE_VARIANT,
    LOAD_VARIANT,
    REMOVE_REPLICA,
    REMOVE_WORKER,
    UNLOAD_VARIANT,
    UPGRADE_VARIANT,
    WORKER_KINDS,
    Action,
)
from ..policies.capacity import hardware_of, replica_units, worker_units
from ..policies.selection import Request
from ..policies.snapshot import ACTIVE, PolicyConfig, Snapshot, VariantLive, WorkerLive
from .traces import Workload, task_demands


@dataclass
class SimOptions:
    policy: str = "infaas"
    scenario: str = ""  # a label for the report
    tick_ms: int = 1000
    seed: int = 0
    warmup_s: float = 0.0
    drain_s: float = 120.0  # after the last arrival, keep serving this long at most
    worker_start_s: tuple[float, float] = (20.0, 30.0)
    billing_minimum_s: float = 60.0  # a worker is billed at least this long from its start (EC2: 60 s)
    demand_window: int = 60  # ticks of per-variant demand history in the snapshot (the SLO-first peak window)
    route_ms: int = 250  # the dispatcher decides each class again this often within a tick (0: once a tick)
    app_id: str = "sim"
    initial_workers: dict[str, int] | None = None  # infaas: default {"cpu": config.min_workers}
    config: PolicyConfig = field(default_factory=lambda: PolicyConfig(max_workers=500))
    # Variant id -> (factor, ms): a run takes the profile's time x factor + ms (default (1, 0)): execution
    # only, the policies and the batch cap keep the profile, as live. For replaying a live run at the
    # speeds its replicas measured (`replay.measured_service_times`): the model slower on shared cores,
    # and a fixed cost per run (results produced) that a factor alone would scale with the batch.
    service_times: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Runs vary as profiled: a run's time is the median's x a lognormal factor whose tail is the profile's
    # (`service_spread`). False: every run takes the median's (the profile's linear fit).
    service_variance: bool = True


# The percentile a profile's `latency_p99_ms` holds, by the profile's source: the Proteus file gives the 90th
# (`proteus_profiles`); our profiler measures the 99th, and a synthetic variant states its 99th as 1.1x.
TAIL_PERCENTILE = {"imported": 90.0}


def service_spread(variant: Variant) -> float:
    """The sigma of a run's time around the profile's median, taken as lognormal (a median of 1, and the
    profiled tail at its percentile): `ln(tail / median) / z`. 0 (every run the median) when the profile has
    no tail above its median."""
    median, tail = variant.latency_p50_ms, variant.latency_p99_ms
    if median <= 0 or tail <= median:
        return 0.0
    percentile = TAIL_PERCENTILE.get(variant.source, 99.0)
    return math.log(tail / median) / NormalDist().inv_cdf(percentile / 100.0)


class SimWorker:
    __slots__ = ("worker_id", "hardware", "units", "memory_budget_mb", "price_per_hour", "started_at", "ready_at",
                 "removed_at", "replicas", "factor", "util")

    def __init__(self, worker_id: str, hardware: str, units: int, memory_mb: float, price: float,
                 started_at: float, ready_at: float):
        self.worker_id, self.hardware, self.units = worker_id, hardware, units
        self.memory_budget_mb, self.price_per_hour = memory_mb, price
        self.started_at, self.ready_at, self.removed_at = started_at, ready_at, math.inf
        self.replicas: list[SimReplica] = []
        self.factor, self.util = 1.0, 0.0


class SimReplica:
    __slots__ = ("sim_variant", "worker", "units", "ready_at", "free_at", "busy", "runs", "wait_p", "wait_ms")

    def __init__(self, sim_variant: SimVariant, worker: SimWorker, units: int, ready_at: float):
        self.sim_variant, self.worker, self.units = sim_variant, worker, units
        self.ready_at, self.free_at, self.busy, self.runs = ready_at, ready_at, 0.0, 0
        # On a GPU shared with other replicas: the chance that one of their batches runs when this one's
        # starts, and their mean batch time, from the last tick (`_gpu_waits`).
        self.wait_p, self.wait_ms = 0.0, 0.0


class SimVariant:
    """A variant's queue, replicas and last-tick measurements."""

    def __init__(self, variant: Variant, index: int, window: int):
        self.variant, self.index, self.batch = variant, index, variant.batch_size
        self.latency = batching.run_latencies(variant)
        self.slowdown, self.overhead_ms = 1.0, 0.0  # a run: latency x slowdown + overhead (`SimOptions.service_times`)
        self.spread = 0.0  # and x a lognormal factor of this sigma (`service_spread`)
        self.queue_at: list[float] = []  # arrival times, from `head` on still waiting
        self.queue_ids: list[int] = []  # their query indices
        self.queue_deadline: list[float] = []  # their deadlines (arrival + SLO)
        self.head = 0
        self.tick_head = 0  # head at the start of the tick: queries [tick_head, head) started in it
        self.batch_finish: list[float] = []
        self.batch_sizes: list[int] = []
        self.replicas: list[SimReplica] = []
        self.unplaced = 0
        self.retiring = False
        self.moving_to = ""
        self.loaded_at: float = 0
        self.last_used = 0
        self.status = "INACTIVE"
        self.arrivals = 0
        self.exec_sum = 0.0
        self.batches = 0
        self.demand_accuracy = 0.0
        self.demand_slo = 0.0
        self.history: deque[float] = deque(maxlen=window)
        self.qps = 0.0
        self.avg_latency = 0.0

    @property
    def queued(self) -> int:
        return len(self.queue_at) - self.head

    @property
    def placed(self) -> bool:
        return bool(self.replicas) or self.unplaced > 0

    def keep(self) -> None:
        """Back in service (the dispatcher chose it, or a move targets it): a retirement is called off."""
        if self.retiring:
            self.retiring, self.moving_to = False, ""


def _believe(snapshot: Snapshot, variant_id: str, belief: VariantLive, worker_id: str | None) -> Snapshot:
    """The dispatcher's snapshot once it asked for a load: the variant loading, and its replica on the worker,
    so that the tick's later decisions do not count that worker's units as free (`execution.worker_with_room`)."""
    if worker_id is not None:
        snapshot = execution.with_replica(snapshot, worker_id, variant_id)
    return snapshot.with_changes(live={**snapshot.live, variant_id: belief})


class _Routing:
    """The dispatcher's view during a tick: the snapshot reported at its start, the one it decides on (queues
    estimated, loads it asked for), and what it routed since the report.

    A variant's queue is estimated as the live dispatcher does (`selection.estimated_queue`: reported + routed
    since - drained since the report), except while its capacity is starting (`selection.capacity_starting`):
    then each query routed joins it and the serving replicas drain it meanwhile, never below empty
    (`selection.drained_queue`). At a burst's onset the replicas sat idle before it; counted as draining the
    burst, that idle time hid the queue the burst built, and a class's whole window went into it."""

    def __init__(self, reported: Snapshot, start: int):
        self.reported, self.snapshot, self.start = reported, reported, start
        self.routed: Counter[str] = Counter()
        self.queues: dict[str, tuple[float, float]] = {}  # variant -> (queue, as of), once routed to

    def route(self, variant: Variant, at: float) -> None:
        self.queues[variant.variant_id] = (self.burst_queue(variant, at) + 1, at)
        self.routed[variant.variant_id] += 1

    def burst_queue(self, variant: Variant, at: float) -> float:
        state = self.snapshot.live_of(variant.variant_id)
        serving = state.serving_replicas
        queue, since = self.queues.get(variant.variant_id, (self.reported.live_of(variant.variant_id).queue_len,
                                                              self.start))
        return selection.drained_queue(variant, serving, queue, at - since if serving > 0 else 0.0, state.batch_ms)

    def queue_at(self, variant: Variant, at: float) -> int:
        state = self.snapshot.live_of(variant.variant_id)
        if selection.capacity_starting(state):
            return math.ceil(self.burst_queue(variant, at))
        serving = state.serving_replicas
        return selection.estimated_queue(variant, max(serving, 1), self.reported.live_of(variant.variant_id).queue_len,
                                         self.routed[variant.variant_id], at - self.start if serving > 0 else 0.0,
                                         state.batch_ms)

    def estimate(self, at: float) -> None:
        """The snapshot with its queues estimated `at`."""
        live = {}
        for variant_id, state in self.snapshot.live.items():
            variant = self.snapshot.variants.get(variant_id)
            queue = self.queue_at(variant, at) if variant is not None else state.queue_len
            live[variant_id] = state if queue == state.queue_len else replace(state, queue_len=queue)
        self.snapshot = self.snapshot.with_changes(live=live)

    def late(self, variant: Variant, request: Request, at: float) -> bool:
        """Whether a query arriving `at` would miss its SLO on `variant`, whose capacity is starting, by its
        estimated queue (False for any other variant: its window's decision stands)."""
        state = self.snapshot.live_of(variant.variant_id)
        if request.latency_ms is None or request.variant is not None or not selection.capacity_starting(state):
            return False
        wait = selection.wait_ms(variant, replace(state, queue_len=self.queue_at(variant, at)))
        return variant.latency_at(max(request.batch, 1)) + wait > request.latency_ms


def _move_ahead(sv: SimVariant, first: int, after: int, late: list[int], batch: list[int]) -> None:
    """Reorder queue positions `first:after` (the late queries and a batch, interleaved) as late, then batch."""
    order = late + batch
    columns: tuple[list, ...] = (sv.queue_at, sv.queue_ids, sv.queue_deadline)
    for column in columns:
        column[first:after] = [column[i] for i in order]


def _required(value: str | None, source: Action | selection.Decision) -> str:
    """A field that `source` always carries: an action's variant, target, worker or hardware as its kind
    needs (see `policies.actions`), an OK decision's variant."""
    if value is None:
        raise ValueError(f"incomplete {type(source).__name__}: {source!r}")
    return value


class Simulator:
    def __init__(self, variants: list[Variant], workload: Workload, options: SimOptions | None = None):
        self.options = options or SimOptions()
        self.policy = self.options.policy
        if self.policy not in scaling.POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; one of {', '.join(scaling.POLICIES)}")
        self.config = scaling.policy_config(self.options.config, self.policy)
        self.catalog = {v.variant_id: v for v in variants}
        self.workload = workload
        self.rng = np.random.default_rng(self.options.seed)
        self.draw = random.Random(self.options.seed).random  # per batch on a shared GPU: cheaper than numpy's
        self.vary = random.Random(self.options.seed + 1).lognormvariate  # a run's factor (`service_spread`)
        self.sim_variants: dict[str, SimVariant] = {}
        self.by_index: list[SimVariant] = []
        self.workers: dict[str, SimWorker] = {}
        self.all_workers: list[SimWorker] = []
        self.pending: dict[str, deque[SimVariant]] = {}
        self.worker_count = 0
        self.last_worker_action: dict[tuple[str, str], int] = {}  # (hardware, up | down) -> ms
        self.snapshot: Snapshot | None = None
        self.baseline: baselines.BaselinePlan | None = None
        self.action_counts: Counter = Counter()
        n = len(workload)
        self.finish = np.full(n, np.inf)
        self.served_by = np.full(n, -1, dtype=np.int32)
        self.cursor = 0
        self.replica_timeline: dict[str, list[tuple[int, int]]] = {}
        self.requests = self._requests()

    # ------------------------------------------------------------ set-up

    def _requests(self) -> list[Request]:
        if self.policy != scaling.INFAAS:
            self.baseline = baselines.plan_baseline(self.policy, self.catalog.values(), task_demands(self.workload),
                                                    self.config)
        requests = []
        for task, accuracy, slo in self.workload.classes:
            if self.baseline is not None:
                requests.append(Request(self.options.app_id, variant=self.baseline.variants[task], latency_ms=slo))
            else:
                requests.append(Request(self.options.app_id, task=task, min_accuracy=accuracy, latency_ms=slo))
        return requests

    def _provision(self) -> None:
        """Before the first query: the baselines' replicas, or infaas's initial (empty) workers."""
        if self.baseline is not None:
            for action in baselines.initial_actions(self.baseline, self.catalog, self.config):
                self._record(action)
                if action.kind == ADD_WORKER:
                    for _ in range(action.to_count - action.from_count):
                        self._start_worker(_required(action.hardware, action), 0.0, ready_at=0.0)
                else:
                    self._add_replica(self._sim(_required(action.variant_id, action)), None, action.hardware, 0.0,
                                      ready_now=True)
            self._place_pending(0.0, ready_now=True)
        else:
            initial = self.options.initial_workers or {"cpu": self.config.min_workers}
            for hw, count in sorted(initial.items()):
                for _ in range(count):
                    self._start_worker(hw, 0.0, ready_at=0.0)

    # ------------------------------------------------------------ the loop

    def run(self) -> dict:
        started = time.perf_counter()
        self._provision()
        tick = self.options.tick_ms
        end_of_trace = self.workload.duration_ms
        last_tick = math.ceil((end_of_trace + self.options.drain_s * 1000) / tick)
        now = 0
        for k in range(last_tick + 1):
            now = k * tick
            self._advance(now)
            snapshot = self._observe(now)
            for action in scaling.decide(snapshot, self.config, self.policy, self.last_worker_action, self.baseline):
                self._apply(action, now)
            self._route(now, now + tick, snapshot)
            self._serve(now + tick)
            self._measure(now + tick)
            if now + tick > end_of_trace and self.cursor >= len(self.workload) and not self._backlog():
                break
        from .report import summarize
        return summarize(self, end_ms=now + tick, wall_s=time.perf_counter() - started)

    def _backlog(self) -> bool:
        return any(sv.queued for sv in self.by_index)

    # ------------------------------------------------------------ monitor -> snapshot

    def _observe(self, now: int) -> Snapshot:
        live: dict[str, VariantLive] = {}
        demand: dict[str, tuple[float, ...]] = {}
        for sv in self.by_index:
            if not sv.placed or sv.retiring:
                continue
            sv.status = monitoring.classify(sv.variant, sv.qps, sv.avg_latency, sv.queued, len(sv.replicas),
                                            sv.status, self.config)
            live[sv.variant.variant_id] = self._variant_live(sv, now)
            demand[sv.variant.variant_id] = tuple(sv.history)[:-1]  # the windows before the latest (`qps`)
        workers = {w.worker_id: self._worker_live(w, now) for w in self.workers.values()}
        previous = self.snapshot
        if previous is None:
            fresh = Snapshot(self.catalog, live, workers, now, demand)
        else:
            fresh = previous.with_changes(live=live, workers=workers, at_ms=now, demand=demand)
        self.snapshot = monitoring.track(previous, fresh, self.config)
        return self.snapshot

    @staticmethod
    def _variant_live(sv: SimVariant, now: float) -> VariantLive:
        return VariantLive(
            status=sv.status, replicas=len(sv.replicas), workers=tuple(sorted({r.worker.worker_id for r in sv.replicas})),
            qps=sv.qps, queue_len=sv.queued, avg_latency_ms=sv.avg_latency, loaded_at_ms=int(sv.loaded_at),
            last_used_ms=int(sv.last_used), loading=sum(1 for r in sv.replicas if r.ready_at > now),
            unplaced=sv.unplaced, demand_accuracy=sv.demand_accuracy, demand_slo_ms=sv.demand_slo,
            moving_to=sv.moving_to)

    def _worker_live(self, worker: SimWorker, now: float) -> WorkerLive:
        hosted = Counter(r.sim_variant.variant.variant_id for r in worker.replicas)
        util = worker.util
        gpu = worker.hardware != "cpu"
        return WorkerLive(worker.worker_id, worker.hardware, cpu_util=0.0 if gpu else util, gpu_util=util if gpu else 0.0,
                          memory_mb=sum(r.sim_variant.variant.peak_memory_mb for r in worker.replicas),
                          memory_budget_mb=worker.memory_budget_mb, variants=dict(hosted),
                          started_at_ms=int(worker.started_at), ready=worker.ready_at <= now)

    def _placement_view(self, hardware: str, now: float) -> Snapshot:
        """The workers of `hardware` as a snapshot, for `execution.worker_for`."""
        workers = {w.worker_id: self._worker_live(w, now) for w in self.workers.values() if w.hardware == hardware}
        return Snapshot(self.catalog, workers=workers, at_ms=int(now))

    # ------------------------------------------------------------ executor

    def _record(self, action: Action) -> None:
        self.action_counts[action.kind] += 1

    def _apply(self, action: Action, now: float) -> None:
        self._record(action)
        kind = action.kind
        if kind in (ADD_REPLICA, LOAD_VARIANT):
            self._add_replica(self._sim(_required(action.variant_id, action)), action.worker_id, action.hardware, now)
        elif kind == REMOVE_REPLICA:
            self._remove_replica(self._sim(_required(action.variant_id, action)), action.worker_id)
        elif kind == UNLOAD_VARIANT:
            self._unload(self._sim(_required(action.variant_id, action)))
        elif kind in (UPGRADE_VARIANT, DOWNGRADE_VARIANT):
            target = self._sim(_required(action.target_variant_id, action))
            target.keep()
            self._add_replica(target, action.worker_id, action.hardware, now)
            self._sim(_required(action.variant_id, action)).moving_to = target.variant.variant_id
        elif kind == ADD_WORKER:
            for _ in range(action.to_count - action.from_count):
                self._start_worker(_required(action.hardware, action), now)
            self._place_pending(now)
        elif kind == REMOVE_WORKER:
            self._stop_worker(self.workers[_required(action.worker_id, action)], now)
        if kind in WORKER_KINDS:
            direction = scaling.UP if kind == ADD_WORKER else scaling.DOWN
            self.last_worker_action[(_required(action.hardware, action), direction)] = int(now)

    def _sim(self, variant_id: str) -> SimVariant:
        sv = self.sim_variants.get(variant_id)
        if sv is None:
            sv = SimVariant(self.catalog[variant_id], len(self.by_index), self.options.demand_window)
            sv.slowdown, sv.overhead_ms = self.options.service_times.get(variant_id, (1.0, 0.0))
            sv.spread = service_spread(sv.variant) if self.options.service_variance else 0.0
            self.sim_variants[variant_id] = sv
            self.by_index.append(sv)
        return sv

    def _add_replica(self, sv: SimVariant, worker_id: str | None, hardware: str | None, now: float,
                     ready_now: bool = False) -> None:
        """One more replica where `execution.worker_for` puts it, else waiting (in `pending`) for a worker."""
        if not sv.replicas:
            sv.loaded_at = now
        hardware = hardware or sv.variant.hardware
        placed = execution.worker_for(self._placement_view(hardware, now), sv.variant, worker_id)
        if placed is None:
            sv.unplaced += 1
            self.pending.setdefault(hardware, deque()).append(sv)
            return
        self._start_replica(sv, self.workers[placed], now, ready_now)

    def _start_replica(self, sv: SimVariant, worker: SimWorker, now: float, ready_now: bool) -> None:
        units = replica_units(sv.variant, hardware_of(sv.variant, self.config))
        ready = now if ready_now else max(now, worker.ready_at) + sv.variant.load_ms
        replica = SimReplica(sv, worker, units, ready)
        sv.replicas.append(replica)
        worker.replicas.append(replica)

    def _place_pending(self, now: float, ready_now: bool = False) -> None:
        """Replicas waiting for a worker go where `execution.worker_for` finds room, in the order they came."""
        for hardware, waiting in self.pending.items():
            view = self._placement_view(hardware, now) if waiting else None
            while view is not None and waiting:
                sv = waiting[0]
                placed = execution.worker_for(view, sv.variant)
                if placed is None:
                    break
                waiting.popleft()
                sv.unplaced -= 1
                self._start_replica(sv, self.workers[placed], now, ready_now)
                view = execution.with_replica(view, placed, sv.variant.variant_id)

    def _remove_replica(self, sv: SimVariant, worker_id: str | None) -> None:
        if sv.unplaced and (worker_id is None or not sv.replicas):
            self._cancel_pending(sv)
            return
        mine = [r for r in sv.replicas if worker_id is None or r.worker.worker_id == worker_id]
        if mine:
            self._drop(min(mine, key=lambda r: r.free_at))

    def _cancel_pending(self, sv: SimVariant) -> None:
        waiting = self.pending.get(sv.variant.hardware)
        if waiting and sv in waiting:
            waiting.remove(sv)
        sv.unplaced = max(sv.unplaced - 1, 0)

    def _drop(self, replica: SimReplica) -> None:
        """A replica leaves; the batch it runs completes (its finish time is already known)."""
        replica.sim_variant.replicas.remove(replica)
        replica.worker.replicas.remove(replica)

    def _unload(self, sv: SimVariant) -> None:
        for replica in list(sv.replicas):
            self._drop(replica)
        while sv.unplaced:
            self._cancel_pending(sv)
        sv.status, sv.moving_to = "INACTIVE", ""

    def _start_worker(self, hardware: str, now: float, ready_at: float | None = None) -> SimWorker:
        hw = hardware_of(hardware, self.config)
        low, high = self.options.worker_start_s
        delay = (low if high <= low else float(self.rng.uniform(low, high))) * 1000.0
        self.worker_count += 1
        worker = SimWorker(f"{hardware}-{self.worker_count}", hardware, worker_units(hw), hw.memory_mb,
                        hw.worker_price_per_hour, now, now + delay if ready_at is None else ready_at)
        self.workers[worker.worker_id] = worker
        self.all_workers.append(worker)
        return worker

    def _stop_worker(self, worker: SimWorker, now: float) -> None:
        for replica in list(worker.replicas):
            self._drop(replica)
        worker.removed_at = now
        del self.workers[worker.worker_id]

    def _advance(self, now: float) -> None:
        """Moves: once the target serves, the source gets no new queries (`retiring`), and it retires when
        `execution.retire_now` says so; a target that went away before serving calls the move off."""
        for sv in self.by_index:
            if not sv.moving_to:
                continue
            target = self.sim_variants[sv.moving_to]
            if not target.placed:
                sv.moving_to, sv.retiring = "", False
                continue
            target_live = self._variant_live(target, now)
            sv.retiring = sv.retiring or execution.serving(target_live)
            if sv.retiring and execution.retire_now(self._variant_live(sv, now), target_live):
                self._unload(sv)
                sv.retiring = False
        self._place_pending(now)

    # ------------------------------------------------------------ dispatcher

    def _route(self, start: int, end: int, snapshot: Snapshot) -> None:
        """Route the tick's queries in windows of `route_ms`, each class decided once per window (and again
        within it: `_route_window`); after the first, on the tick's snapshot with every variant's queue
        estimated (`_Routing`: the reported queue, plus what was routed since, less what the replicas drained
        meanwhile). Decided once for the whole tick on the queue reported at its
        start, a class that found a long queue (a one-second spike) had every query of the next second
        rejected, though the replicas drain such a queue in a fraction of it."""
        step = self.options.route_ms if 0 < self.options.route_ms < end - start else end - start
        routing = _Routing(snapshot, start)
        for at in range(start, end, step):
            if at > start:
                routing.estimate(at)
            self._route_window(at, min(at + step, end), routing)

    def _route_window(self, start: int, end: int, routing: _Routing) -> None:
        """Each class is decided at its first query of the window, and again at a later one if it had no
        variant, or if its variant's capacity is starting and its estimated queue would make that query miss
        its SLO (`_Routing.late`): the live dispatcher decides every query, so a burst that fills a variant
        before its new replicas serve moves on to another loaded variant meeting the class (selection step
        3), or is answered at once. Decided once for the window, a burst's class all went to the one variant
        and queued there past its SLO while other loaded variants had room (bursty, seed 1: 442 violations,
        186 decided again)."""
        w = self.workload
        first = self.cursor
        last = int(np.searchsorted(w.arrival_ms, end, side="left"))
        if last <= first:
            return
        routed = np.full(last - first, -1, dtype=np.int32)
        chosen: dict[int, SimVariant | None] = {}
        for offset, request_class in enumerate(w.demand_class[first:last].tolist()):
            at = float(w.arrival_ms[first + offset])
            request = self.requests[request_class]
            if request_class not in chosen:
                chosen[request_class] = self._decide(request, at, routing)
            else:
                current = chosen[request_class]
                if current is None or routing.late(current.variant, request, at):
                    routing.estimate(at)
                    chosen[request_class] = self._decide(request, at, routing)
            sv = chosen[request_class]
            if sv is not None:  # None: no variant meets the request: the query is rejected (a violation)
                routed[offset] = sv.index
                routing.route(sv.variant, at)
        self.served_by[first:last] = routed
        order = np.argsort(routed, kind="stable")
        ordered = routed[order]
        cuts = np.flatnonzero(np.diff(ordered)) + 1
        for lo, hi in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(ordered)])), strict=True):
            if ordered[lo] < 0:
                continue
            ids = order[lo:hi] + first
            sv = self.by_index[ordered[lo]]
            sv.queue_at.extend(w.arrival_ms[ids].tolist())
            sv.queue_ids.extend(ids.tolist())
            sv.queue_deadline.extend((w.arrival_ms[ids] + w.deadline_ms[ids]).tolist())
            sv.arrivals += len(ids)
            sv.last_used = float(w.arrival_ms[ids[-1]])
            sv.demand_accuracy = float(w.accuracy_demand[ids].max())
            sv.demand_slo = float(w.deadline_ms[ids].min())
        self.cursor = last

    def _decide(self, request: Request, at: float, routing: _Routing) -> SimVariant | None:
        """The dispatcher's decision for a query arriving `at`: its variant (loaded, or loading now), None if
        no variant meets it."""
        decision = selection.select(routing.snapshot, request)
        if not decision.ok:
            return None
        sv = self._sim(_required(decision.variant_id, decision))
        if not sv.placed:
            self._apply(Action(LOAD_VARIANT, "dispatcher: " + decision.reason, sv.variant.variant_id,
                               worker_id=decision.load_on, hardware=sv.variant.hardware, to_count=1), at)
            belief = VariantLive(status=ACTIVE, replicas=1, workers=(decision.load_on,) if decision.load_on else (),
                                 loaded_at_ms=int(at))
            routing.snapshot = _believe(routing.snapshot, sv.variant.variant_id, belief, decision.load_on)
        sv.keep()
        if decision.prefetch is not None and not self._sim(decision.prefetch).placed:
            routing.snapshot = self._prefetch(decision, at, routing.snapshot)
        return sv

    def _prefetch(self, decision: selection.Decision, at: float, snapshot: Snapshot) -> Snapshot:
        """Load the cheaper variant selection named for a class (its queries go there once it serves)."""
        variant = self.catalog[_required(decision.prefetch, decision)]
        self._apply(Action(LOAD_VARIANT, "dispatcher: " + decision.reason, variant.variant_id,
                           worker_id=decision.prefetch_on, hardware=variant.hardware, to_count=1), at)
        belief = VariantLive(status=ACTIVE, replicas=1, loading=1, loaded_at_ms=int(at),
                             workers=(decision.prefetch_on,) if decision.prefetch_on else ())
        return _believe(snapshot, variant.variant_id, belief, decision.prefetch_on)

    # ------------------------------------------------------------ serving

    def _serve(self, end: float) -> None:
        for sv in self.by_index:
            if sv.head < len(sv.queue_at) and sv.replicas:
                self._serve_variant(sv, end, self.draw, self.vary)

    @staticmethod
    def _serve_variant(sv: SimVariant, end: float, draw, vary) -> None:
        """Each free replica runs the next batch of what has arrived (`batching.next_run`: up to the batch
        size, never waiting for more); the queries whose deadline passed before it could start are answered
        without running. Those are moved ahead of the batch in the queue, so that every batch and every
        group of late queries is a run of consecutive queue positions (`_measure` maps them back)."""
        replicas, queue_at, deadlines, latency = sv.replicas, sv.queue_at, sv.queue_deadline, sv.latency
        total, head = len(queue_at), sv.head
        finishes, sizes = sv.batch_finish, sv.batch_sizes
        heap = [(r.free_at if r.free_at > r.ready_at else r.ready_at, k) for k, r in enumerate(replicas)]
        heapq.heapify(heap)
        exec_sum, ran = 0.0, 0
        while head < total:
            free, k = heap[0]
            start = max(queue_at[head], free)
            if start >= end:
                break
            arrived = bisect_right(queue_at, start, head, total)
            batch, late, after = batching.next_run(deadlines, sv.batch, start, first=head, end=arrived,
                                                     latency=latency)
            if late:
                _move_ahead(sv, head, after, late, batch)
                finishes.append(math.inf)
                sizes.append(len(late))
            if batch:
                replica = replicas[k]
                base = latency[len(batch)] * sv.slowdown * (vary(0.0, sv.spread) if sv.spread else 1.0) + sv.overhead_ms
                finish = start + base * replica.worker.factor
                if replica.wait_p and draw() < replica.wait_p:  # a GPU runs one batch at a time
                    finish += draw() * replica.wait_ms
                finishes.append(finish)
                sizes.append(len(batch))
                replica.busy += base
                replica.runs += 1
                exec_sum += finish - start
                ran += 1
                heapq.heapreplace(heap, (finish, k))
            head = after
        for free, k in heap:
            replicas[k].free_at = free
        sv.exec_sum += exec_sum
        sv.batches += ran
        sv.head = head

    # ------------------------------------------------------------ measurements

    def _measure(self, end: float) -> None:
        tick_s = self.options.tick_ms / 1000.0
        second = int(end // 1000) - 1
        for sv in self.by_index:
            if sv.batch_sizes:
                ids = np.fromiter(sv.queue_ids[sv.tick_head:sv.head], dtype=np.int64, count=sv.head - sv.tick_head)
                self.finish[ids] = np.repeat(sv.batch_finish, sv.batch_sizes)
                sv.batch_finish, sv.batch_sizes = [], []
            sv.avg_latency = sv.exec_sum / sv.batches if sv.batches else 0.0
            sv.exec_sum, sv.batches = 0.0, 0
            if sv.head > 50_000 and sv.head * 2 > len(sv.queue_at):
                del sv.queue_at[:sv.head], sv.queue_ids[:sv.head], sv.queue_deadline[:sv.head]
                sv.head = 0
            sv.tick_head = sv.head
            sv.qps = sv.arrivals / tick_s
            sv.history.append(sv.qps)
            sv.arrivals = 0
            count = len(sv.replicas)
            changes = self.replica_timeline.setdefault(sv.variant.variant_id, [])
            if (changes[-1][1] if changes else 0) != count:
                changes.append((second, count))
        for worker in self.workers.values():
            offered = 0.0
            if worker.hardware != "cpu":
                self._gpu_waits(worker)
            for replica in worker.replicas:
                backlogged = replica.sim_variant.queued > 0 and replica.ready_at <= end
                share = 1.0 if backlogged else min(replica.busy / self.options.tick_ms, 1.0)
                offered += share * replica.units / worker.units
                replica.busy, replica.runs = 0.0, 0
            worker.util, worker.factor = min(offered, 1.0), max(offered, 1.0)

    def _gpu_waits(self, worker: SimWorker) -> None:
        """Replicas sharing a GPU: one GPU runs one batch at a time, so a batch that starts while another
        replica's runs waits for the rest of it. Each replica's chance of that in the next tick is the share of
        the last tick the others were busy, and the wait a uniform share of their mean batch time. (Above full
        use, the worker's contention factor slows every batch as well.)"""
        tick = self.options.tick_ms
        if len(worker.replicas) < 2:
            for replica in worker.replicas:
                replica.wait_p = 0.0
            return
        busy = [min(r.busy / tick, 1.0) for r in worker.replicas]
        total_busy = sum(r.busy for r in worker.replicas)
        total_runs = sum(r.runs for r in worker.replicas)
        for replica, mine in zip(worker.replicas, busy, strict=True):
            runs = total_runs - replica.runs
            replica.wait_p = min(sum(busy) - mine, 1.0)
            replica.wait_ms = (total_busy - replica.busy) / runs if runs else 0.0
