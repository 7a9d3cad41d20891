"""A worker process: hosts several variants at once (multi-tenancy, within a memory budget).

Each hosted variant has one executor and `replicas` consumer threads (`replica.Replica`) in the
consumer group of the variant's topic; replicas are group members, so Kafka spreads the partitions
over them, across workers too (at-least-once: a crashed worker's queries are served again by
another member). A replica thread that dies is replaced.

Commands arrive on `infaas.control` (load, unload, replicas, stop); a report with per-variant
metrics (`metrics`) goes to `infaas.metrics` every second.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque

from confluent_kafka import OFFSET_END, TopicPartition

from .. import bus, metrics
from ..schemas.codec import DecodeError, default_codec
from ..schemas.messages import DeadLetter, WorkerReport
from ..settings import Settings
from ..store import BufferedWriter, Store
from .admission import now_ms
from .replica import HostedVariant, Replica
from .reporting import process_cpu_seconds, process_rss_mb, variant_report

log = logging.getLogger(__name__)

LOAD_RETRY_S = 3.0  # how often a failed load is tried again
DRAIN_S = 60.0  # longest wait for a variant's queue to empty before it is unloaded anyway


def close_executor(executor) -> None:
    close = getattr(executor, "close", None)
    if close:
        close()


class Worker:
    """The process: hosted variants, the control loop and the heartbeat."""

    def __init__(self, settings: Settings, hardware: str = "cpu", worker_id: str | None = None,
                 memory_budget_mb: float = 2048.0, max_batch_delay_ms: float = 5.0, report_interval_s: float = 1.0,
                 session_timeout_ms: int = 6000, offline_cpu_threshold: float | None = 0.4):
        self.settings = settings
        self.hardware = hardware
        self.worker_id = worker_id or f"{socket.gethostname()}-{hardware}-{os.getpid()}"
        self.memory_budget_mb = memory_budget_mb
        self.max_batch_delay_ms = max_batch_delay_ms
        self.report_interval_s = report_interval_s
        self.session_timeout_ms = session_timeout_ms
        self.codec = default_codec()
        self.store = Store(settings)
        self.writer = BufferedWriter(self.store)
        self.hosted: dict[str, HostedVariant] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._producer = bus.producer(settings)
        self._threads: list[threading.Thread] = []
        self._cpu_last = (time.monotonic(), process_cpu_seconds())
        self.started_at = int(now_ms())
        self.events: deque[str] = deque(maxlen=100)
        self.cpu_util = 0.0  # over the last report interval
        self.offline_cpu_threshold = offline_cpu_threshold  # None: no batch jobs on this worker
        self.offline = None
        self._catalog = None
        self._catalog_at = 0.0
        self._catalog_tried_at = 0.0
        self._failed_loads: dict[str, int] = {}  # variant -> replicas wanted
        self._draining: set[str] = set()  # variants to unload once their queue here is served
        self._reloading: set[str] = set()  # variants whose new model version is being opened
        self._last_retry = 0.0

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, preload: list[str] = ()) -> Worker:
        control = self._control_consumer()  # assigned before we announce readiness: no command is missed
        for variant_id in preload:
            self.load(variant_id)
        for target, name, args in ((self._control_loop, "control", (control,)), (self._report_loop, "report", ())):
            thread = threading.Thread(target=target, args=args, name=f"worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.offline_cpu_threshold is not None:
            from ..offline import OfflineRunner
            self.offline = OfflineRunner(self, self.offline_cpu_threshold)
            self.offline.start()
        return self

    def online_queue(self) -> int:
        """Queries waiting on every variant this worker hosts."""
        with self._lock:
            return sum(r.waiting for h in self.hosted.values() for r in h.replicas)

    def wait(self) -> None:
        while not self._stop.wait(0.5):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self.offline is not None:
            self.offline.stopping.set()
            self.offline.join(timeout=10)
        with self._lock:
            for variant_id in list(self.hosted):
                self.unload(variant_id)
        for thread in self._threads:
            thread.join(timeout=5)
        self._report()  # a last report without the unloaded variants
        self._producer.flush(5)
        self.writer.close()
        self.store.close()

    # --- variants -----------------------------------------------------------------------------
    def load(self, variant_id: str, replicas: int = 1) -> HostedVariant | None:
        self._draining.discard(variant_id)  # wanted again: a pending unload is cancelled
        with self._lock:
            if variant_id in self.hosted:
                self.set_replicas(variant_id, max(replicas, len(self.hosted[variant_id].replicas)))
                return self.hosted[variant_id]
            catalog = self.catalog()
            variant = catalog.variants.get(variant_id)
            if variant is None:
                log.error("cannot load %s: no such variant in the catalogue", variant_id)
                return None
            if variant.hardware != self.hardware:
                log.error("cannot load %s: it runs on %s, this worker is %s", variant_id, variant.hardware,
                          self.hardware)
                return None
            used = sum(h.memory_mb for h in self.hosted.values())
            if used + variant.peak_memory_mb > self.memory_budget_mb:
                log.error("cannot load %s: %.0f MB hosted + %.0f MB needed > budget %.0f MB", variant_id, used,
                          variant.peak_memory_mb, self.memory_budget_mb)
                return None
            hosted = self._open(variant, catalog.tasks[variant.task])
            self.hosted[variant_id] = hosted
            self.set_replicas(variant_id, replicas)
            self._record_event(f"loaded {variant_id} in {hosted.load_ms:.0f} ms with {replicas} replica(s)")
            return hosted

    def _open(self, variant, task) -> HostedVariant:
        """The variant's artifact fetched and opened (not yet serving)."""
        from ..repository import Repository
        from .executors import open_executor
        started = time.monotonic()
        executor = open_executor(variant, Repository.from_settings(self.settings).fetch(variant.artifact))
        load_ms = (time.monotonic() - started) * 1000
        return HostedVariant(variant, task, executor, load_ms, variant.peak_memory_mb,
                             run_lock=None if getattr(executor, "thread_safe", True) else threading.Lock())

    def follow_catalog(self) -> None:
        """Keep what is hosted in step with the catalogue. A variant that left it (its model deleted,
        or a new version without it) is drained and unloaded; one whose model has a new version is
        reloaded: the new artifact is opened beside the old, its replicas join the variant's group,
        then the old replicas finish their batch and leave, so no query fails during the switch."""
        catalog = self.catalog()
        with self._lock:
            hosted = dict(self.hosted)
        for variant_id, current in hosted.items():
            newest = catalog.variants.get(variant_id)
            if newest is None:
                if variant_id not in self._draining:
                    self._record_event(f"{variant_id} left the catalogue: draining, then unloading")
                self.drain_then_unload(variant_id)
            elif (newest.model_version, newest.artifact) != (current.variant.model_version, current.variant.artifact) \
                    and variant_id not in self._reloading and newest.task in catalog.tasks:
                self._reloading.add(variant_id)
                threading.Thread(target=self._reload, args=(current, newest, catalog.tasks[newest.task]),
                                 name=f"reload-{variant_id}", daemon=True).start()

    def _reload(self, old: HostedVariant, variant, task) -> None:
        variant_id = variant.variant_id
        try:
            fresh = self._open(variant, task)
            with self._lock:
                if self.hosted.get(variant_id) is not old:  # unloaded or replaced meanwhile
                    close_executor(fresh.executor)
                    return
                self.hosted[variant_id] = fresh
                self.set_replicas(variant_id, len(old.replicas))
            self._retire(old)
            self._record_event(f"reloaded {variant_id}: version {old.variant.model_version} -> "
                               f"{variant.model_version} in {fresh.load_ms:.0f} ms")
        except Exception:  # the old version keeps serving; tried again at the next catalogue check
            log.exception("reloading %s (version %s) failed", variant_id, variant.model_version)
        finally:
            self._reloading.discard(variant_id)

    @staticmethod
    def _retire(hosted: HostedVariant) -> None:
        """Stop a replaced version's replicas (each finishes and commits its batch), then close it."""
        for replica in hosted.replicas:
            replica.stopping.set()
        for replica in hosted.replicas:
            replica.join(timeout=30)
        close_executor(hosted.executor)

    def set_replicas(self, variant_id: str, count: int) -> None:
        with self._lock:
            hosted = self.hosted.get(variant_id)
            if hosted is None:
                return
            while len(hosted.replicas) < count:
                replica = Replica(self, hosted, len(hosted.replicas))
                replica.start()
                hosted.replicas.append(replica)
            while len(hosted.replicas) > max(count, 0):
                replica = hosted.replicas.pop()
                replica.stopping.set()
                replica.join(timeout=10)

    def drain_then_unload(self, variant_id: str) -> None:
        """Unload once the queries already queued for the variant here are served (in the
        background: other commands go on). Leaving its consumer group earlier could strand them
        when no other worker hosts it. A load of the same variant meanwhile cancels the unload."""
        if variant_id not in self.hosted or variant_id in self._draining:
            return
        self._draining.add(variant_id)

        def drain() -> None:
            deadline = time.monotonic() + DRAIN_S
            probe = bus.group_probe(self.settings, variant_id)
            try:
                while time.monotonic() < deadline and variant_id in self._draining and \
                        bus.uncommitted_queries(self.settings, variant_id, probe) > 0:
                    time.sleep(0.2)
            finally:
                probe.close()
            if variant_id in self._draining:
                self._draining.discard(variant_id)
                self.unload(variant_id)
        threading.Thread(target=drain, name=f"drain-{variant_id}", daemon=True).start()

    def unload(self, variant_id: str) -> None:
        with self._lock:
            if variant_id not in self.hosted:
                return
            self.set_replicas(variant_id, 0)
            hosted = self.hosted.pop(variant_id)
            close_executor(hosted.executor)
            self._record_event(f"unloaded {variant_id}")

    def catalog(self, max_age_s: float = 5.0):
        """The catalogue (variants, tasks), refreshed from Cassandra when older than `max_age_s`;
        while Cassandra is away the last one serves, so loading a known variant still works."""
        from ..views import Catalog
        if self._catalog is None or time.monotonic() - self._catalog_tried_at > max_age_s:
            self._catalog_tried_at = time.monotonic()  # while Cassandra is away, tried again only this often
            try:
                self._catalog = Catalog.load(self.store)
                self._catalog_at = time.monotonic()
            except Exception as err:  # Cassandra away
                if self._catalog is None:
                    raise
                log.warning("catalogue refresh failed, using the one from %.0f s ago: %s",
                            time.monotonic() - self._catalog_at, err)
        return self._catalog

    def _retry_loads(self) -> None:
        """Loads that failed (e.g. the store was away) are tried again until they succeed or the
        variant is unloaded: queries routed to it wait in its topic meanwhile."""
        for variant_id, replicas in list(self._failed_loads.items()):
            if variant_id in self.hosted or self.load(variant_id, replicas) is not None:
                self._failed_loads.pop(variant_id, None)

    def _record_event(self, text: str) -> None:
        log.info("%s: %s", self.worker_id, text)
        self.events.append(text)

    # --- control ------------------------------------------------------------------------------
    def _control_consumer(self):
        consumer = bus.consumer(self.settings, f"{self.settings.topic_prefix}.worker.{uuid.uuid4().hex[:8]}")
        topic = self.settings.topic("control")
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in meta.partitions])
        return consumer

    def _control_loop(self, consumer) -> None:
        try:
            while not self._stop.is_set():
                for message in bus.consume_ready(consumer, 100, 0.2):
                    if not message.error():
                        self._command(message.value())
        finally:
            consumer.close()

    def _command(self, payload: bytes) -> None:
        try:
            command = self.codec.decode_as("WorkerCommand", payload)
        except DecodeError as err:
            log.warning("ignoring undecodable command: %s", err.reason)
            return
        mine = command["worker_id"] == self.worker_id or (
            command["worker_id"] is None and command["action"] == "STOP"
            and command["hardware"] in (None, self.hardware))
        if not mine:
            return
        action, variant_id = command["action"], command["variant_id"]
        # Why it was asked (the dispatcher's or scaler's reason): where a variant came from, in the worker's log.
        log.info("%s: %s %s (%s)", self.worker_id, action, variant_id or "", command.get("reason") or "no reason given")
        try:
            if action == "LOAD" and variant_id:
                self._load_or_retry(variant_id, max(command["replicas"], 1))
            elif action == "UNLOAD" and variant_id:
                self._failed_loads.pop(variant_id, None)
                self.drain_then_unload(variant_id)
            elif action == "SET_REPLICAS" and variant_id:
                if command["replicas"] <= 0:
                    self.drain_then_unload(variant_id)
                elif variant_id in self.hosted:
                    self._draining.discard(variant_id)
                    self.set_replicas(variant_id, command["replicas"])
                else:
                    self._load_or_retry(variant_id, command["replicas"])
            elif action == "STOP":
                self._stop.set()
        except Exception:  # a bad artifact or a full memory budget must not take the worker down
            log.exception("command %s %s failed", action, variant_id)

    def _load_or_retry(self, variant_id: str, replicas: int) -> None:
        self._failed_loads.pop(variant_id, None)
        try:
            loaded = self.load(variant_id, replicas)
        except Exception:
            log.exception("loading %s failed; will retry", variant_id)
            loaded = None
        if loaded is None:
            self._failed_loads[variant_id] = replicas

    # --- reporting ----------------------------------------------------------------------------
    def supervise_replicas(self) -> int:
        """Replace the replica threads that died (not those asked to stop): the dead one leaves
        what is reported and counted, a new group member takes its place. Returns how many."""
        replaced = 0
        with self._lock:
            for variant_id, hosted in self.hosted.items():
                for dead in [r for r in hosted.replicas if not r.is_alive() and not r.stopping.is_set()]:
                    hosted.replicas.remove(dead)
                    self._record_event(f"replica {dead.name} of {variant_id} died ({dead.failure or 'no error'}); "
                               "replacing it")
                    log.error("replica %s of %s died (%s); replacing it", dead.name, variant_id, dead.failure)
                    replica = Replica(self, hosted, dead.index)
                    replica.start()
                    hosted.replicas.append(replica)
                    replaced += 1
        return replaced

    def _report_loop(self) -> None:
        while not self._stop.wait(self.report_interval_s):
            try:
                self.supervise_replicas()
            except Exception:  # e.g. Kafka refused the new consumer: next time
                log.exception("replacing a dead replica failed")
            self._report()
            try:
                self.follow_catalog()
            except Exception as err:  # the store away: what is hosted keeps serving
                log.warning("catalogue check failed: %s", err)
            if self._failed_loads and time.monotonic() - self._last_retry > LOAD_RETRY_S:
                self._last_retry = time.monotonic()
                try:
                    self._retry_loads()
                except Exception as err:  # still failing: next time
                    log.warning("load retry failed: %s", err)

    def _report(self) -> None:
        now = time.monotonic()
        cpu = process_cpu_seconds()
        elapsed = max(now - self._cpu_last[0], 1e-3)
        cpu_util = min((cpu - self._cpu_last[1]) / (elapsed * (os.cpu_count() or 1)), 1.0)
        self._cpu_last = (now, cpu)
        self.cpu_util = cpu_util
        with self._lock:
            hosted = list(self.hosted.values())
        variants = [variant_report(h, elapsed) for h in hosted]
        metrics.worker_report(variants)
        report = WorkerReport(worker_id=self.worker_id, hardware=self.hardware, host=socket.gethostname(),
                              pid=os.getpid(), reported_at=int(now_ms()), interval_ms=int(elapsed * 1000),
                              cpu_util=cpu_util, gpu_util=None, memory_mb=process_rss_mb(),
                              memory_budget_mb=self.memory_budget_mb, variants=variants)
        record = report.to_record()
        self._producer.produce(self.settings.topic("metrics"), key=self.worker_id.encode(),
                               value=report.encode(self.codec))
        self._producer.poll(0)
        # Buffered: with Cassandra down, serving goes on (the Kafka report above is what it relies on).
        self.writer.submit("put_worker", {"worker_id": self.worker_id, "hardware": self.hardware,
                                          "host": record["host"], "pid": record["pid"],
                                          "started_at": self.started_at, "last_heartbeat": record["reported_at"],
                                          "variants": {m["variant_id"]: m["replicas"] for m in variants},
                                          "cpu_util": cpu_util, "gpu_util": None, "memory_mb": record["memory_mb"],
                                          "memory_budget_mb": self.memory_budget_mb, "status": "up"})

    def dead_letter(self, message, reason: str) -> None:
        """Keyed as the message was (a routed query: by its id, so `infaas trace` finds it)."""
        letter = DeadLetter.about((message.topic(), message.partition(), message.offset()), reason,
                                  f"worker {self.worker_id}", message.value(), int(now_ms()))
        self._producer.produce(self.settings.topic("deadletter"), key=message.key(), value=letter.encode(self.codec))
        self._producer.poll(0)


def run(settings: Settings, hardware: str, worker_id: str | None, preload: list[str], memory_budget_mb: float,
        max_batch_delay_ms: float, offline_cpu_threshold: float | None = 0.4) -> int:
    """`infaas worker`: serve until SIGINT/SIGTERM or a STOP command."""
    import signal
    worker = Worker(settings, hardware, worker_id, memory_budget_mb, max_batch_delay_ms,
                    offline_cpu_threshold=offline_cpu_threshold)
    signal.signal(signal.SIGTERM, lambda *_: worker._stop.set())
    worker.start(preload)
    metrics.mark_ready()
    print(f"infaas worker ready ({worker.worker_id}, hosting {', '.join(worker.hosted) or 'nothing yet'})",
          flush=True)
    try:
        worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
    return 0
