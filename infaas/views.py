"""What a service knows of the system, kept fresh in the background and never read per query:
the catalogue (apps, tasks, variants) from Cassandra, and the live state (variant states from the
compacted `infaas.state` topic, worker loads from `infaas.metrics`). Both feed an immutable
`Snapshot`, swapped atomically so readers never see a half-built one.

A variant's queue in the snapshot is an estimate for now, not the last report's figure: the queries
this process routed since the report are added and the replicas' drain since then subtracted
(`estimated_queue`), re-estimated every 0.1 s while any queue is left and for the routed variant at
each routed query. The drain goes at the pace the replicas measured (`service_ms` in their workers'
reports: the time a batch holds a replica, its run, results and commit), which co-located load slows.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from . import bus
from .catalog import TaskInfo, Variant
from .policies.selection import estimated_queue, observed_batch_ms
from .policies.snapshot import INACTIVE, RETIRING, Snapshot, VariantLive, WorkerLive
from .schemas.codec import DecodeError, default_codec
from .settings import Settings
from .store import Store, StoreError

log = logging.getLogger(__name__)

RETIREMENT_MS = 10 * 60 * 1000  # how long a retired variant stays out of selection at most
# The monitor republishes every loaded variant's state each second; an older record is left over
# from an earlier run (the topic is compacted, so it stays) and says nothing about now.
STALE_STATE_MS = 10_000
FORGET_WORKER_MS = 10 * 60 * 1000  # a worker silent this long is forgotten (it is long gone from snapshots)
REESTIMATE_S = 0.1  # how often queue estimates are refreshed while a queue is left


@dataclass(frozen=True)
class Catalog:
    """Registered apps, tasks and variants (static profiles)."""
    apps: frozenset[str] = frozenset()
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    models: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # model -> (task, owner app, public)

    @classmethod
    def load(cls, store: Store) -> Catalog:
        variants = {v.variant_id: v for v in store.all_variants()}
        return cls(frozenset(row["app_id"] for row in store.list_apps()),
                   {t.task: t for t in store.list_tasks()}, variants,
                   {v.model: (v.task, v.app_id, v.public) for v in variants.values()})

    def task_visible(self, task: str, app_id: str) -> bool:
        """Does the app see at least one model of the task? A task with only other apps' private
        models must look exactly like one that does not exist."""
        return any(task == t and (public or owner == app_id) for t, owner, public in self.models.values())

    def model_visible(self, model: str, app_id: str) -> str | None:
        """The model's task if the app may use the model, else None (unknown and private look alike)."""
        entry = self.models.get(model)
        if entry is None or not (entry[2] or entry[1] == app_id):
            return None
        return entry[0]


def live_from_state(record: dict, last_used_ms: int = 0) -> VariantLive:
    return VariantLive(status=record["state"], replicas=record["replicas"], workers=tuple(record["workers"]),
                       qps=record["qps"], queue_len=record["queue_len"], avg_latency_ms=record["avg_latency_ms"],
                       last_used_ms=last_used_ms, avg_rows=record["avg_rows"],
                       demand_accuracy=record["demand_accuracy"], demand_slo_ms=record["demand_slo_ms"])


def worker_from_report(record: dict) -> WorkerLive:
    return WorkerLive(worker_id=record["worker_id"], hardware=record["hardware"], cpu_util=record["cpu_util"],
                      gpu_util=record["gpu_util"] or 0.0, memory_mb=record["memory_mb"],
                      memory_budget_mb=record["memory_budget_mb"],
                      variants={m["variant_id"]: m["replicas"] for m in record["variants"]},
                      started_at_ms=record["reported_at"])


class SystemView:
    """Catalogue + live state -> Snapshot, refreshed by two background threads."""

    def __init__(self, settings: Settings, catalog_refresh_s: float = 5.0, worker_expiry_s: float = 5.0,
                 on_change: Callable[[Snapshot], None] | None = None, honor_retirements: bool = True,
                 estimate_queues: bool = True):
        self.settings = settings
        self.codec = default_codec()
        self.catalog = Catalog()
        self.catalog_refresh_s = catalog_refresh_s
        self.worker_expiry_ms = int(worker_expiry_s * 1000)
        self.on_change = on_change
        self._live: dict[str, VariantLive] = {}
        self._state_at: dict[str, int] = {}  # variant -> updated_at of its latest state record
        self._last_used: dict[str, int] = {}  # variant -> last time it had traffic (ms)
        self._last_report = 0.0  # monotonic time of the last worker report
        self._workers: dict[str, tuple[int, WorkerLive]] = {}  # id -> (seen at, state)
        self._queues: dict[str, tuple[int, dict[str, int]]] = {}  # worker id -> (reported at, variant -> queue)
        # worker id -> variant -> (ms a batch held its replica, avg_batch) of the latest interval that ran batches
        self._speeds: dict[str, dict[str, tuple[float, float]]] = {}
        self._overruns: dict[str, dict[str, float]] = {}  # worker id -> variant -> overrun_ms of its latest answers
        self._routed: dict[str, deque[int]] = {}  # variant -> when this process routed queries to it (ms)
        self._queued = False  # some variant's estimated queue was not empty at the last rebuild
        self._overrides: dict[str, tuple[int, VariantLive]] = {}  # local beliefs until the monitor confirms
        # Variants whose traffic the scaler moved elsewhere (upgrade/downgrade): they get no new
        # queries while their queue drains (the scaler then unloads them).
        self.honor_retirements = honor_retirements
        self.estimate_queues = estimate_queues  # the scaler decides on what was reported
        self._retiring: dict[str, int] = {}  # variant -> until (ms)
        self._dirty = threading.Event()
        self._lock = threading.Lock()  # one rebuild at a time, so a newer snapshot is never replaced by an older
        self._stop = threading.Event()
        self._store = Store(settings)
        self.snapshot = Snapshot(variants={}, at_ms=int(time.time() * 1000))
        self._threads: list[threading.Thread] = []

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, wait_s: float = 30.0) -> SystemView:
        self.refresh_catalog()
        for target, name in ((self._catalog_loop, "catalog"), (self._feed_loop, "state-feed")):
            thread = threading.Thread(target=target, name=f"infaas-view-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._store.close()

    # --- catalogue ----------------------------------------------------------------------------
    def refresh_catalog(self) -> bool:
        try:
            catalog = Catalog.load(self._store)
        except (StoreError, Exception) as err:  # Cassandra down: keep serving from the last catalogue
            log.warning("catalogue refresh failed, keeping the last one: %s", err)
            return False
        if catalog != self.catalog:
            self.catalog = catalog
            self._rebuild(new_profiles=True)
        return True

    def _catalog_loop(self) -> None:
        while not self._stop.wait(self.catalog_refresh_s):
            self.refresh_catalog()

    # --- live state ---------------------------------------------------------------------------
    def _feed_loop(self) -> None:
        consumer = bus.consumer(self.settings, f"{self.settings.topic_prefix}.view", **{"enable.auto.commit": False})
        assignment = []
        for name, start in (("state", OFFSET_BEGINNING), ("metrics", OFFSET_END), ("scaling", OFFSET_END)):
            topic = self.settings.topic(name)
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, start) for p in meta.partitions]
        consumer.assign(assignment)  # no group: every reader sees every record
        last_rebuild = 0.0
        try:
            while not self._stop.is_set():
                for message in bus.consume_ready(consumer, 500, REESTIMATE_S / 2):
                    if not message.error():
                        self._apply(message.topic(), message.value())
                since = time.monotonic() - last_rebuild
                due = self._dirty.is_set() or self._queued
                if (due and since >= REESTIMATE_S) or since >= 1.0:  # also ages out stale state
                    self._dirty.clear()
                    last_rebuild = time.monotonic()
                    self._rebuild()
        finally:
            consumer.close()

    @property
    def observed_age_s(self) -> float:
        """Seconds since the last worker report arrived (inf before the first)."""
        return time.monotonic() - self._last_report if self._last_report else float("inf")

    def _apply(self, topic: str, payload: bytes) -> None:
        try:
            name, record = self.codec.decode(payload)
        except DecodeError as err:
            log.warning("ignoring undecodable record on %s: %s", topic, err.reason)
            return
        if name == "VariantState":
            variant_id = record["variant_id"]
            if record["qps"] > 0 or variant_id not in self._last_used:
                self._last_used[variant_id] = record["updated_at"]  # loading counts as a use
            self._live[variant_id] = live_from_state(record, self._last_used[variant_id])
            self._state_at[variant_id] = record["updated_at"]
            self._overrides.pop(record["variant_id"], None)
        elif name == "WorkerReport":
            self._workers[record["worker_id"]] = (int(time.time() * 1000), worker_from_report(record))
            self._queues[record["worker_id"]] = (record["reported_at"],
                                                 {m["variant_id"]: m["queue_len"] for m in record["variants"]})
            speeds = self._speeds.setdefault(record["worker_id"], {})
            for m in record["variants"]:
                held = m["service_ms"] or m["exec_ms"]  # the model run alone from a worker that predates service_ms
                if held > 0 and m["avg_batch"] > 0:  # an idle interval keeps the last measure
                    speeds[m["variant_id"]] = (held, m["avg_batch"])
            overruns = self._overruns.setdefault(record["worker_id"], {})
            for m in record["variants"]:
                if m["served"] + m["deadline_missed"] > 0:  # likewise
                    overruns[m["variant_id"]] = m["overrun_ms"]
            self._last_report = time.monotonic()
        elif name == "ScalingEvent":
            if record["kind"] in ("UPGRADE_VARIANT", "DOWNGRADE_VARIANT") and record["variant_id"]:
                self._retiring[record["variant_id"]] = record["at"] + RETIREMENT_MS
            elif record["kind"] == "UNLOAD_VARIANT" and record["variant_id"]:
                self._retiring.pop(record["variant_id"], None)
            elif record["kind"] in ("ADD_REPLICA", "LOAD_VARIANT") and record["variant_id"]:
                self._retiring.pop(record["variant_id"], None)  # wanted again
        self._dirty.set()

    def note_routed(self, variant_id: str) -> None:
        """A query was routed to the variant (called by the dispatcher, from its own thread). The
        snapshot counts it at once, for the next query's decision: a snapshot re-estimated only every
        `REESTIMATE_S` admits everything that arrives meanwhile on one queue length (a burst of 6 at
        60 q/s, each 0.1 s, measured), and a variant of batch 1 then gets several runs more than its
        SLO allows, shed late at the worker as DEADLINE_EXCEEDED."""
        now = int(time.time() * 1000)
        with self._lock:  # appended and counted in one step, so a rebuild never counts it twice
            self._routed.setdefault(variant_id, deque()).append(now)
            if self.estimate_queues:
                self._count_routed(variant_id, now)
        if not self._dirty.is_set():
            self._dirty.set()

    def _count_routed(self, variant_id: str, now: int) -> None:
        snapshot = self.snapshot
        state = snapshot.live.get(variant_id)
        if state is None or not state.loaded:
            return
        reports = [self._queues[wid] for wid in snapshot.workers if wid in self._queues]
        monitor = self._live.get(variant_id)  # the snapshot's own queue is an estimate already
        estimate = self._queue_now(variant_id, state, monitor.queue_len if monitor else 0, snapshot.workers,
                                   reports, now)
        if estimate is not state:
            self.snapshot = snapshot.with_changes(live={**snapshot.live, variant_id: estimate}, at_ms=now)

    def believe(self, variant_id: str, live: VariantLive, for_s: float = 30.0) -> None:
        """Record a local belief (e.g. "being loaded") until the monitor reports or it expires."""
        self._overrides[variant_id] = (int((time.time() + for_s) * 1000), live)
        self._rebuild()

    def _rebuild(self, new_profiles: bool = False) -> None:
        with self._lock:
            self._rebuild_locked(new_profiles)

    def _rebuild_locked(self, new_profiles: bool) -> None:
        now = int(time.time() * 1000)
        live = {vid: state for vid, state in self._live.items() if now - self._state_at[vid] <= STALE_STATE_MS}
        for variant_id, (until, belief) in list(self._overrides.items()):
            if until < now:
                self._overrides.pop(variant_id, None)
            elif live.get(variant_id, VariantLive()).status == INACTIVE:
                live[variant_id] = belief
        if self.honor_retirements:
            for variant_id, until in list(self._retiring.items()):
                if until < now:
                    del self._retiring[variant_id]
                elif variant_id in live and live[variant_id].status != INACTIVE:
                    live[variant_id] = dataclasses.replace(live[variant_id], status=RETIRING)
        self._forget_silent_workers(now)
        workers = {wid: w for wid, (seen, w) in list(self._workers.items()) if now - seen <= self.worker_expiry_ms}
        if self.estimate_queues:
            live = self._estimate_queues(live, workers, now)
        if new_profiles or self.snapshot.variants is not self.catalog.variants:
            snapshot = Snapshot(variants=self.catalog.variants, live=live, workers=workers, at_ms=now)
        else:
            snapshot = self.snapshot.with_changes(live=live, workers=workers, at_ms=now)
        self.snapshot = snapshot
        if self.on_change:
            self.on_change(snapshot)

    def _forget_silent_workers(self, now: int) -> None:
        """Drop what was kept about workers silent for `FORGET_WORKER_MS`: each worker an autoscaled
        deployment ever ran would otherwise stay in memory. One that reports again is learnt again."""
        # A copy: the feed thread adds reports while another thread (catalogue, dispatcher) rebuilds.
        for worker_id in [wid for wid, (seen, _) in list(self._workers.items()) if now - seen > FORGET_WORKER_MS]:
            for kept in (self._workers, self._queues, self._speeds, self._overruns):
                kept.pop(worker_id, None)

    def _estimate_queues(self, live: dict[str, VariantLive], workers: dict, now: int) -> dict[str, VariantLive]:
        """Each loaded variant's queue now (`_queue_now`)."""
        reports = [self._queues[wid] for wid in workers if wid in self._queues]
        queued = False
        for variant_id in set(self._routed) | set(live):
            state = live.get(variant_id)
            if state is None or not state.loaded:
                self._drop_reported(variant_id, reports, now)
                continue
            live[variant_id] = self._queue_now(variant_id, state, state.queue_len, workers, reports, now)
            queued = queued or live[variant_id].queue_len > 0
        self._queued = queued
        return live

    def _drop_reported(self, variant_id: str, reports: list, now: int) -> tuple[int | None, int]:
        """(the queue its workers reported, None without a report; as of when). The variant's routed
        times before then are dropped: the report counted them."""
        seen = [(at, queues[variant_id]) for at, queues in reports if variant_id in queues]
        as_of = max((at for at, _ in seen), default=self._state_at.get(variant_id, now - STALE_STATE_MS))
        routed = self._routed.get(variant_id)
        while routed and routed[0] < as_of:
            routed.popleft()
        return (sum(q for _, q in seen) if seen else None), as_of

    def _queue_now(self, variant_id: str, state: VariantLive, monitor_queue: int, workers: dict, reports: list,
                   now: int) -> VariantLive:
        """A loaded variant's `state` with its queue now: the latest reports of its workers (else the
        monitor's `monitor_queue`), plus what was routed here since, less the drain since
        (`estimated_queue`), at its observed batch time."""
        reported, as_of = self._drop_reported(variant_id, reports, now)
        variant = self.catalog.variants.get(variant_id)
        if variant is None:
            return state
        reported = monitor_queue if reported is None else reported
        batch_ms = self._observed_batch_ms(variant, workers)
        routed = len(self._routed.get(variant_id, ()))
        queue = estimated_queue(variant, state.replicas, reported, routed, now - as_of, batch_ms)
        overrun = max((self._overruns.get(wid, {}).get(variant_id, 0.0) for wid in workers), default=0.0)
        if queue == state.queue_len and batch_ms == state.batch_ms and overrun == state.overrun_ms:
            return state
        return dataclasses.replace(state, queue_len=queue, batch_ms=batch_ms, overrun_ms=overrun)

    def _observed_batch_ms(self, variant: Variant, workers: dict) -> float:
        """A full batch's execution time as the variant's live replicas measured it, averaged over its
        workers by replicas (0: none measured yet)."""
        total = weight = 0.0
        for worker_id, worker in workers.items():
            speed = self._speeds.get(worker_id, {}).get(variant.variant_id)
            replicas = worker.variants.get(variant.variant_id, 0)
            if speed is not None and replicas > 0:
                total += replicas * observed_batch_ms(variant, *speed)
                weight += replicas
        return total / weight if weight else 0.0
