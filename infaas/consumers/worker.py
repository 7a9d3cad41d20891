"""A worker process: hosts several variants at once (multi-tenancy, within a memory budget).

Each hosted variant has one executor and `replicas` consumer threads in the consumer group of the
variant's topic; replicas are group members, so Kafka spreads the partitions over them, across
workers too. A replica batches queries (SLO-aware), runs the model, produces the results to the
reply topics, waits until Kafka acknowledged them, and only then commits the offsets
(at-least-once: a crashed worker's queries are served again by another member).

Commands arrive on `infaas.control` (load, unload, replicas, stop); a report with per-variant
metrics goes to `infaas.metrics` every second.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from .. import bus, metrics
from ..catalog import TaskInfo, Variant
from ..schemas.codec import DEAD_LETTER_PAYLOAD_BYTES, DecodeError, default_codec
from ..settings import Settings
from ..store import BufferedWriter, Store
from ..tensors import TensorError, check_input, from_tensor, to_tensor
from .batching import BatchPolicy, pack, wait_budget_ms

log = logging.getLogger(__name__)

LOAD_RETRY_S = 3.0  # how often a failed load is tried again
DRAIN_S = 60.0  # longest wait for a variant's queue to empty before it is unloaded anyway


def now_ms() -> float:
    return time.time() * 1000.0


class VariantMetrics:
    """Counters for one reporting interval; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.served = self.errors = self.deadline_missed = self.batches = self.rows = self.query_rows = 0
        self.exec_ms = 0.0  # model execution time, summed over batches
        self.latencies: list[float] = []
        self.demand_accuracy = 0.0  # the strictest requirements among the queries served
        self.demand_slo_ms = 0.0

    def record(self, served: list[dict], errors: int, missed: int, rows: int, batches: int, exec_ms: float) -> None:
        """`served`: the OK results with their queries' requirements (see Replica._serve)."""
        with self._lock:
            self.served += len(served)
            self.errors += errors
            self.deadline_missed += missed
            self.batches += batches
            self.rows += rows
            self.exec_ms += exec_ms
            for item in served:
                self.latencies.append(item["latency_ms"])
                self.query_rows += item["rows"]
                if item["min_accuracy"]:
                    self.demand_accuracy = max(self.demand_accuracy, item["min_accuracy"])
                if item["slo_ms"]:
                    self.demand_slo_ms = min(self.demand_slo_ms or item["slo_ms"], item["slo_ms"])

    def take(self) -> dict:
        with self._lock:
            snapshot = {"served": self.served, "errors": self.errors, "deadline_missed": self.deadline_missed,
                        "latencies": self.latencies, "avg_batch": self.rows / self.batches if self.batches else 0.0,
                        "exec_ms": self.exec_ms / self.batches if self.batches else 0.0,
                        "avg_rows": self.query_rows / self.served if self.served else 1.0,
                        "demand_accuracy": self.demand_accuracy, "demand_slo_ms": self.demand_slo_ms}
            self.reset()
        return snapshot


@dataclass
class Hosted:
    variant: Variant
    task: TaskInfo
    executor: object
    load_ms: float
    memory_mb: float
    replicas: list[Replica] = field(default_factory=list)
    metrics: VariantMetrics = field(default_factory=VariantMetrics)
    run_lock: threading.Lock | None = None  # for executors that are not thread-safe
    last_queue: int = 0  # queue length at the last report, for the arrival rate


def admit(routed: dict, hosted: Hosted, settings: Settings):
    """A routed query as a dict to run, or (topic, result) to answer at once (bad input).

    A module function rather than a Replica method so that it can be exercised without Kafka."""
    query = routed["query"]
    topic = query["reply_topic"] or settings.results_topic(query["app_id"])
    try:
        inputs = from_tensor(query["inputs"])
        info = hosted.task
        check_input(inputs, info.input_dtype, info.input_shape, 1 << 20)
    except TensorError as err:
        return (topic, result_for(hosted.variant, query, "BAD_INPUT", f"inputs: {err}", routed))
    return {"topic": topic, "query": query, "routed": routed, "inputs": inputs, "rows": int(inputs.shape[0])}


def result_for(variant: Variant, query: dict, status: str, error: str | None, routed: dict, compute_ms: float = 0.0,
               compute_started: float | None = None) -> dict:
    done = now_ms()
    queue_ms = (compute_started or done) - routed["dispatched_at"]
    return {"query_id": query["query_id"], "app_id": query["app_id"], "status": status, "error": error,
            "outputs": [], "model": variant.model, "variant": variant.variant_id, "hardware": variant.hardware,
            "accuracy": variant.accuracy, "latency_ms": max(done - query["sent_at"], 0.0),
            "queue_ms": max(queue_ms, 0.0), "compute_ms": compute_ms, "best_accuracy_within_slo": None,
            "fastest_latency_ms": None, "completed_at": int(done)}


class Replica(threading.Thread):
    """One consumer-group member serving one variant."""

    def __init__(self, worker: Worker, hosted: Hosted, index: int):
        super().__init__(name=f"replica-{hosted.variant.variant_id}-{index}", daemon=True)
        self.worker, self.hosted = worker, hosted
        self.settings = worker.settings
        self.codec = worker.codec
        self.policy = BatchPolicy(hosted.variant.batch_size, worker.max_batch_delay_ms)
        self.stopping = threading.Event()
        self.lag = 0
        self.backlog_rows = max(4 * hosted.variant.batch_size, 32)
        topic = self.settings.variant_topic(hosted.variant.variant_id)
        self.consumer = bus.consumer(self.settings, topic, **{"session.timeout.ms": worker.session_timeout_ms,
                                                              "client.id": f"{worker.worker_id}-{index}"})
        self.consumer.subscribe([topic])
        self.producer = bus.producer(self.settings)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                first = self.consumer.poll(0.1)
                if first is None or first.error():
                    self._update_lag()
                    continue
                items = self._gather(self._decode(first))
                # Whatever is already queued joins this round (no waiting): one flush and one commit
                # then cover several model runs, which is what keeps small batch sizes fast.
                backlog = max(self.backlog_rows - len(items), 0)
                items += [self._decode(m) for m in self.consumer.consume(backlog, 0) if not m.error()]
                self._serve(items)
        except Exception:
            log.exception("replica %s crashed", self.name)
        finally:
            self.consumer.close()  # leave the group now, so partitions move at once
            self.producer.flush(10)

    def _decode(self, message) -> tuple:
        """(message, routed query or None when undecodable)."""
        try:
            return message, self.codec.decode_as("RoutedQuery", message.value())
        except DecodeError as err:
            self.worker.dead_letter(message, err.reason)
            return message, None

    def _gather(self, first: tuple) -> list[tuple]:
        """Wait for more queries while the earliest deadline allows, up to the batch size."""
        items = [first]
        deadlines = [r["deadline_at"] for _, r in items if r and r["deadline_at"] is not None]
        run_ms = self.hosted.variant.latency_at(self.policy.batch_size)
        while len(items) < self.policy.batch_size:
            budget = wait_budget_ms(self.policy, now_ms(), min(deadlines, default=None), run_ms)
            if budget <= 0:
                break
            more = [self._decode(m) for m in self.consumer.consume(self.policy.batch_size - len(items),
                                                                   budget / 1000.0) if not m.error()]
            if not more:
                break
            items += more
            deadlines += [r["deadline_at"] for _, r in more if r and r["deadline_at"] is not None]
        return items

    def _serve(self, items: list[tuple]) -> None:
        queries, answered = [], []
        for _, routed in items:
            if routed is not None:  # None: dead-lettered already
                outcome = self._admit(routed)
                (queries if isinstance(outcome, dict) else answered).append(outcome)
        for topic, result in answered:
            self._produce(topic, result)
        rows, served, batches, exec_ms = 0, [], 0, 0.0
        for run in pack([q["rows"] for q in queries], self.policy.batch_size):
            batch, late = self._split_late([queries[i] for i in run])
            rows += sum(q["rows"] for q in batch)
            results = self._run(batch) if batch else []
            if results:
                batches += 1
                exec_ms += results[0][1]["compute_ms"]
            served += [{"latency_ms": r["latency_ms"], "rows": q["rows"], "min_accuracy": q["query"]["min_accuracy"],
                        "slo_ms": q["query"]["latency_ms"]} for q, (_, r) in zip(batch, results, strict=True)
                       if r["status"] == "OK"]
            for topic, result in late + results:
                self._produce(topic, result)  # sent now: results of early runs do not wait for later ones
                answered.append((topic, result))
        if self.producer.flush(30) == 0:
            self.consumer.commit(asynchronous=True)  # only after the results are acknowledged
        else:
            log.error("results not acknowledged within 30 s; offsets not committed (they will be served again)")
        statuses = [result["status"] for _, result in answered]
        self.hosted.metrics.record(served, errors=sum(s not in ("OK", "DEADLINE_EXCEEDED") for s in statuses),
                                   missed=statuses.count("DEADLINE_EXCEEDED"), rows=rows, batches=batches,
                                   exec_ms=exec_ms)
        self._update_lag()

    def _admit(self, routed: dict):
        return admit(routed, self.hosted, self.settings)

    def _split_late(self, batch: list[dict]) -> tuple[list[dict], list[tuple[str, dict]]]:
        """Queries past their deadline are answered DEADLINE_EXCEEDED without running."""
        now = now_ms()
        keep, late = [], []
        for q in batch:
            deadline = q["routed"]["deadline_at"]
            if deadline is not None and now > deadline:
                late.append((q["topic"], self._result(q["query"], "DEADLINE_EXCEEDED", f"deadline passed "
                                                      f"{now - deadline:.1f} ms before the query could run",
                                                      q["routed"])))
            else:
                keep.append(q)
        return keep, late

    def _run(self, batch: list[dict]) -> list[tuple[str, dict]]:
        stacked = np.concatenate([q["inputs"] for q in batch]) if len(batch) > 1 else batch[0]["inputs"]
        started = now_ms()
        try:
            if self.hosted.run_lock is not None:
                with self.hosted.run_lock:
                    outputs = self.hosted.executor.run(stacked)
            else:
                outputs = self.hosted.executor.run(stacked)
        except Exception as err:  # a model failure answers the batch, it does not kill the replica
            log.exception("variant %s failed on a batch of %d", self.hosted.variant.variant_id, len(stacked))
            return [(q["topic"], self._result(q["query"], "INTERNAL_ERROR", f"model run failed: {err}", q["routed"]))
                    for q in batch]
        compute = now_ms() - started
        results, offset = [], 0
        for q in batch:
            rows = slice(offset, offset + q["rows"])
            offset += q["rows"]
            result = self._result(q["query"], "OK", None, q["routed"], compute, started)
            result["outputs"] = [to_tensor(np.asarray(out)[rows]) for out in outputs]
            results.append((q["topic"], result))
        return results

    def _result(self, query: dict, status: str, error: str | None, routed: dict, compute_ms: float = 0.0,
                compute_started: float | None = None) -> dict:
        return result_for(self.hosted.variant, query, status, error, routed, compute_ms, compute_started)

    def _produce(self, topic: str, result: dict) -> None:
        payload = self.codec.encode("Result", result)
        while True:
            try:
                self.producer.produce(topic, key=result["query_id"].encode(), value=payload)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _update_lag(self) -> None:
        try:
            lag = 0
            for tp in self.consumer.position(self.consumer.assignment()):
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag += max(high - tp.offset, 0)
            self.lag = lag
        except KafkaException:  # the assignment changes under a rebalance; the next call will do
            return


def uncommitted_queries(settings: Settings, variant_id: str, probe=None) -> int:
    """Queries in the variant's topic its consumer group has not committed: what leaving the group
    now could strand. Read from the broker, not from the replicas' positions, which read 0 while a
    rebalance has taken their partitions away. Unknown (broker away) counts as not empty.
    `probe`: a consumer from `group_probe` to reuse across calls (one is opened otherwise)."""
    topic = settings.variant_topic(variant_id)
    own = probe is None
    probe = group_probe(settings, variant_id) if own else probe
    try:
        partitions = probe.list_topics(topic, timeout=5).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=5)
        backlog = 0
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=5)
            backlog += high - (tp.offset if tp.offset >= 0 else low)
        return backlog
    except KafkaException:
        return 1
    finally:
        if own:
            probe.close()


def group_probe(settings: Settings, variant_id: str):
    """A consumer with the variant group's id that never subscribes, so it never joins the group."""
    return bus.consumer(settings, settings.variant_topic(variant_id))


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
        self.hosted: dict[str, Hosted] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._producer = bus.producer(settings)
        self._threads: list[threading.Thread] = []
        self._cpu_last = (time.monotonic(), _cpu_seconds())
        self.started_at = int(now_ms())
        self.events: deque[str] = deque(maxlen=100)
        self.cpu_util = 0.0  # over the last report interval
        self.offline_cpu_threshold = offline_cpu_threshold  # None: no batch jobs on this worker
        self.offline = None
        self._catalog = None
        self._catalog_at = 0.0
        self._failed_loads: dict[str, int] = {}  # variant -> replicas wanted
        self._draining: set[str] = set()  # variants to unload once their queue here is served
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
            return sum(r.lag for h in self.hosted.values() for r in h.replicas)

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
    def load(self, variant_id: str, replicas: int = 1) -> Hosted | None:
        from ..repository import Repository
        from .executors import open_executor
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
            started = time.monotonic()
            path = Repository.from_settings(self.settings).fetch(variant.artifact)
            executor = open_executor(variant, path)
            load_ms = (time.monotonic() - started) * 1000
            task = catalog.tasks[variant.task]
            hosted = Hosted(variant, task, executor, load_ms, variant.peak_memory_mb,
                            run_lock=None if getattr(executor, "thread_safe", True) else threading.Lock())
            self.hosted[variant_id] = hosted
            self.set_replicas(variant_id, replicas)
            self._note(f"loaded {variant_id} in {load_ms:.0f} ms with {replicas} replica(s)")
            return hosted

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
            probe = group_probe(self.settings, variant_id)
            try:
                while time.monotonic() < deadline and variant_id in self._draining and \
                        uncommitted_queries(self.settings, variant_id, probe) > 0:
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
            close = getattr(hosted.executor, "close", None)
            if close:
                close()
            self._note(f"unloaded {variant_id}")

    def catalog(self, max_age_s: float = 5.0):
        """The catalogue (variants, tasks), refreshed from Cassandra when older than `max_age_s`;
        while Cassandra is away the last one serves, so loading a known variant still works."""
        from ..streams.views import Catalog
        if self._catalog is None or time.monotonic() - self._catalog_at > max_age_s:
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

    def _note(self, text: str) -> None:
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
                for message in consumer.consume(100, 0.2):
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
    def _report_loop(self) -> None:
        while not self._stop.wait(self.report_interval_s):
            self._report()
            if self._failed_loads and time.monotonic() - self._last_retry > LOAD_RETRY_S:
                self._last_retry = time.monotonic()
                try:
                    self._retry_loads()
                except Exception as err:  # still failing: next time
                    log.warning("load retry failed: %s", err)

    def _report(self) -> None:
        now = time.monotonic()
        cpu = _cpu_seconds()
        elapsed = max(now - self._cpu_last[0], 1e-3)
        cpu_util = min((cpu - self._cpu_last[1]) / (elapsed * (os.cpu_count() or 1)), 1.0)
        self._cpu_last = (now, cpu)
        self.cpu_util = cpu_util
        with self._lock:
            hosted = list(self.hosted.values())
        variants = [self._variant_metrics(h, elapsed) for h in hosted]
        metrics.worker_report(variants)
        record = {"worker_id": self.worker_id, "hardware": self.hardware, "host": socket.gethostname(),
                  "pid": os.getpid(), "reported_at": int(now_ms()), "interval_ms": int(elapsed * 1000),
                  "cpu_util": cpu_util, "gpu_util": None, "memory_mb": _rss_mb(),
                  "memory_budget_mb": self.memory_budget_mb, "variants": variants}
        self._producer.produce(self.settings.topic("metrics"), key=self.worker_id.encode(),
                               value=self.codec.encode("WorkerReport", record))
        self._producer.poll(0)
        # Buffered: with Cassandra down, serving goes on (the Kafka report above is what it relies on).
        self.writer.submit("put_worker", {"worker_id": self.worker_id, "hardware": self.hardware,
                                          "host": record["host"], "pid": record["pid"],
                                          "started_at": self.started_at, "last_heartbeat": record["reported_at"],
                                          "variants": {m["variant_id"]: m["replicas"] for m in variants},
                                          "cpu_util": cpu_util, "gpu_util": None, "memory_mb": record["memory_mb"],
                                          "memory_budget_mb": self.memory_budget_mb, "status": "up"})

    @staticmethod
    def _variant_metrics(hosted: Hosted, elapsed_s: float) -> dict:
        taken = hosted.metrics.take()
        metrics.observe_latencies(hosted.variant.variant_id, taken["latencies"])
        latencies = np.asarray(taken["latencies"]) if taken["latencies"] else None
        # Demand is what arrived, not what was served: queries handled plus the growth of the queue.
        queue = sum(r.lag for r in hosted.replicas)
        handled = taken["served"] + taken["deadline_missed"] + taken["errors"]
        arrived = max(handled + queue - hosted.last_queue, 0)
        hosted.last_queue = queue
        return {"variant_id": hosted.variant.variant_id, "replicas": len(hosted.replicas),
                "served": taken["served"], "errors": taken["errors"], "deadline_missed": taken["deadline_missed"],
                "qps": arrived / elapsed_s, "exec_ms": taken["exec_ms"],
                "p50_ms": float(np.percentile(latencies, 50)) if latencies is not None else 0.0,
                "p99_ms": float(np.percentile(latencies, 99)) if latencies is not None else 0.0,
                "avg_latency_ms": float(latencies.mean()) if latencies is not None else 0.0,
                "queue_len": queue, "avg_batch": taken["avg_batch"],
                "memory_mb": hosted.memory_mb, "avg_rows": taken["avg_rows"],
                "demand_accuracy": taken["demand_accuracy"], "demand_slo_ms": taken["demand_slo_ms"]}

    def dead_letter(self, message, reason: str) -> None:
        record = {"source_topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
                  "reason": reason, "service": f"worker {self.worker_id}", "payload": message.value()[:DEAD_LETTER_PAYLOAD_BYTES],
                  "at": int(now_ms())}
        self._producer.produce(self.settings.topic("deadletter"), value=self.codec.encode("DeadLetter", record))
        self._producer.poll(0)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except OSError:
        return 0.0


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
