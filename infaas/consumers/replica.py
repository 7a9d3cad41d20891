"""A replica: one consumer-group member serving one variant. It gathers a batch (SLO-aware, see
`batching`), sheds what cannot make its deadline, runs the model, produces the results, waits until
Kafka acknowledged them and only then commits the offsets (at-least-once)."""

from __future__ import annotations

import logging
import os
import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from confluent_kafka import KafkaException, TopicPartition

from .. import bus
from ..catalog import TaskInfo, Variant
from ..policies import batching
from ..schemas.codec import DecodeError
from ..schemas.messages import Result
from ..tensors import to_tensor
from .admission import admit, estimate_overrun_ms, now_ms, result_for
from .batching import ArrivalRate, BatchPolicy, wait_budget_ms
from .reporting import VariantMetrics

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)
LAG_REFRESH_MS = 20.0


@dataclass
class HostedVariant:
    variant: Variant
    task: TaskInfo
    executor: object
    load_ms: float
    memory_mb: float
    replicas: list[Replica] = field(default_factory=list)
    metrics: VariantMetrics = field(default_factory=VariantMetrics)
    run_lock: threading.Lock | None = None  # for executors that are not thread-safe
    last_queue: int = 0  # queue length at the last report, for the arrival rate
    run_latency: list[float] = field(default_factory=list)  # the profile's run time by rows (batching's cap)

    def __post_init__(self) -> None:
        self.run_latency = self.run_latency or batching.run_latencies(self.variant)


RECENT_RUNS = 16  # the runs a replica's pace is the median of: recent enough to follow contention
FAULT_DIR_ENV = "INFAAS_FAULT_DIR"  # tests only, see `injected_fault`


def injected_fault(fault_dir: str | None, variant_id: str) -> None:
    """A test-only fault point, off unless `INFAAS_FAULT_DIR` is set: a file
    `crash-replica-<variant id>` there makes one replica of that variant fail (the first that
    removes the file) with a batch in hand, as a bug in a replica thread would."""
    if not fault_dir:
        return
    try:
        os.remove(os.path.join(fault_dir, f"crash-replica-{variant_id.replace('/', '_')}"))
    except OSError:
        return
    raise RuntimeError("injected fault (INFAAS_FAULT_DIR)")


class Replica(threading.Thread):
    """One consumer-group member serving one variant. The worker replaces one that dies."""

    def __init__(self, worker: Worker, hosted: HostedVariant, index: int):
        super().__init__(name=f"replica-{hosted.variant.variant_id}-{index}", daemon=True)
        self.worker, self.hosted, self.index = worker, hosted, index
        self.settings = worker.settings
        self.codec = worker.codec
        self.policy = BatchPolicy(hosted.variant.batch_size, worker.max_batch_delay_ms)
        self.arrivals = ArrivalRate()
        self.stopping = threading.Event()
        self.failure: str | None = None  # why the thread died, if it did
        self.fault_dir = os.environ.get(FAULT_DIR_ENV)
        self.lag = 0  # queries in the variant's partitions this replica has not consumed
        self._lag_at = -LAG_REFRESH_MS  # when `lag` was read
        self.in_hand = 0  # queries it consumed and has not run yet
        self.backlog_rows = max(4 * hosted.variant.batch_size, 32)
        topic = self.settings.variant_topic(hosted.variant.variant_id)
        self.consumer = bus.consumer(self.settings, topic, **{"session.timeout.ms": worker.session_timeout_ms,
                                                              "client.id": f"{worker.worker_id}-{index}"})
        bus.subscribe_from_start(self.consumer, [topic])
        self.producer = bus.producer(self.settings)
        self.failed_deliveries = 0  # results Kafka did not accept, over the replica's life
        self._batch_failures: list[str] = []  # delivery errors of the batch being served
        self._overruns: list[float] = []  # of the round's answers (see `_result`)
        self.serving_since: float | None = None  # when it first got a query
        self.run_times: deque[float] = deque(maxlen=RECENT_RUNS)  # ms each recent run held the replica

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                first = self.consumer.poll(0.1)
                if first is None or first.error():
                    self._update_lag()
                    continue
                self.serving_since = self.serving_since or now_ms()
                items = self._gather(self._decode(first))
                # Whatever is already queued joins this round (no waiting): one flush and one commit
                # then cover several model runs, which is what keeps small batch sizes fast.
                backlog = max(self.backlog_rows - len(items), 0)
                queued = [self._decode(m) for m in self.consumer.consume(backlog, 0) if not m.error()]
                self.arrivals.note(now_ms(), len(queued))
                injected_fault(self.fault_dir, self.hosted.variant.variant_id)
                self._serve(items + queued)
        except Exception as err:
            self.failure = f"{type(err).__name__}: {err}"
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
        self.arrivals.note(now_ms())
        deadlines = [r["deadline_at"] for _, r in items if r and r["deadline_at"] is not None]
        run_ms = self.hosted.variant.latency_at(self.policy.batch_size)
        while len(items) < self.policy.batch_size:
            now = now_ms()
            budget = wait_budget_ms(self.policy, now, min(deadlines, default=None), run_ms, len(items),
                                    self.arrivals.per_ms(now))
            if budget <= 0:
                break
            more = [self._decode(m) for m in self.consumer.consume(self.policy.batch_size - len(items),
                                                                   budget / 1000.0) if not m.error()]
            if not more:
                break
            self.arrivals.note(now_ms(), len(more))
            items += more
            deadlines += [r["deadline_at"] for _, r in more if r and r["deadline_at"] is not None]
        return items

    def _serve(self, items: list[tuple]) -> None:
        began, queries, answered = now_ms(), [], []
        for _, routed in items:
            if routed is not None:  # None: dead-lettered already
                outcome = self._admit(routed)
                (queries if isinstance(outcome, dict) else answered).append(outcome)
        for topic, result in answered:
            self._produce(topic, result)
        rows, served, batches, exec_ms = 0, [], 0, 0.0
        while queries:
            batch, late, queries = self._next_run(queries)
            self.in_hand = len(queries)
            self._update_lag()  # what is waiting is reported as of this run, not as of the round's start
            self._answer(late, answered)  # at once, not after the runs ahead of them
            if not batch:
                break
            rows += sum(q["rows"] for q in batch)
            started = now_ms()
            results = self._run(batch)
            batches += 1
            exec_ms += results[0][1].compute_ms
            served += [{"latency_ms": r.latency_ms, "rows": q["rows"], "min_accuracy": q["query"]["min_accuracy"],
                        "slo_ms": q["query"]["latency_ms"]} for q, (_, r) in zip(batch, results, strict=True)
                       if r.status == "OK"]
            self._answer(results, answered)  # sent now: results of early runs do not wait for later ones
            self.run_times.append(now_ms() - started)
        self._commit_if_delivered(items)
        statuses = [result.status for _, result in answered]
        # The replica is busy for all of this, not only the model runs: under contention producing,
        # delivering and committing added 6-18 ms to a 30-50 ms run at batch 1 (measured), and a
        # queue drained at the run time alone is drained faster than it is.
        self.hosted.metrics.record(served, errors=sum(s not in ("OK", "DEADLINE_EXCEEDED") for s in statuses),
                                   missed=statuses.count("DEADLINE_EXCEEDED"), rows=rows, batches=batches,
                                   exec_ms=exec_ms, busy_ms=now_ms() - began if batches else 0.0,
                                   overruns=self._overruns)
        self._overruns = []
        self._update_lag()

    @property
    def waiting(self) -> int:
        """Queries waiting for this replica: not consumed yet, or consumed and not run yet. Kafka's lag
        alone missed those in hand: a replica takes up to `backlog_rows` at once, and its reports were
        off by up to 3 queries (150 ms at batch 1) either way, measured against the dispatcher's routing."""
        return self.lag + self.in_hand

    def _answer(self, results: list[tuple[str, Result]], answered: list[tuple[str, Result]]) -> None:
        for topic, result in results:
            self._produce(topic, result)
            answered.append((topic, result))

    def _commit_if_delivered(self, items: list[tuple]) -> None:
        """Commit the batch's offsets only once Kafka acknowledged every result of it. Otherwise
        rewind to the batch's first queries, so that they are served again (at-least-once: a
        result must not be lost with its query committed)."""
        unacknowledged = self.producer.flush(30)
        failures, self._batch_failures = self._batch_failures, []
        if unacknowledged == 0 and not failures:
            self.consumer.commit(asynchronous=True)
            return
        self.failed_deliveries += len(failures) + unacknowledged
        log.error("replica %s: %d result(s) refused (%s), %d unacknowledged after 30 s; the batch's %d queries "
                  "will be served again", self.name, len(failures), "; ".join(sorted(set(failures))) or "-",
                  unacknowledged, len(items))
        self._rewind(items)
        self.stopping.wait(1.0)  # whatever refused the results (broker, topic) gets a moment

    def _rewind(self, items: list[tuple]) -> None:
        first: dict[tuple[str, int], int] = {}
        for message, _ in items:
            key = (message.topic(), message.partition())
            first[key] = min(first.get(key, message.offset()), message.offset())
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as err:  # revoked meanwhile: its next owner starts from the committed offset
                log.warning("cannot rewind %s[%d] to %d: %s", topic, partition, offset, err)

    def _delivered(self, err, message) -> None:
        if err is not None:
            self._batch_failures.append(f"{message.topic()}: {err.str()}")

    def _admit(self, routed: dict):
        return admit(routed, self.hosted, self.settings)

    def _next_run(self, queries: list[dict]) -> tuple[list[dict], list[tuple[str, Result]], list[dict]]:
        """(the next run, DEADLINE_EXCEEDED answers for the queries that cannot start before their
        deadline, the queries left for later runs): planned again before each run, at the pace of the
        replica's recent runs (`plan_runs`)."""
        now, run_ms = now_ms(), self.run_ms()
        runs, hopeless = batching.plan_runs([q["rows"] for q in queries], [q["routed"]["deadline_at"] for q in queries],
                                   self.policy.batch_size, now, run_ms, self.hosted.run_latency)
        late = []
        for index, start in hopeless:
            q = queries[index]
            deadline = q["routed"]["deadline_at"]
            error = (f"deadline passed {now - deadline:.1f} ms before the query could run" if now > deadline else
                     f"cannot start before its deadline, {deadline - now:.0f} ms away: the runs ahead of it take "
                     f"about {start - now:.0f} ms")
            late.append((q["topic"], self._result(q["query"], "DEADLINE_EXCEEDED", error, q["routed"])))
        if not runs:
            return [], late, []
        return [queries[i] for i in runs[0]], late, [queries[i] for run in runs[1:] for i in run]

    def run_ms(self) -> float:
        """How long a run holds the replica (model run and its results produced): the median of its
        recent runs, the profile's full batch before any."""
        if not self.run_times:
            return self.hosted.variant.latency_at(self.policy.batch_size)
        return statistics.median(self.run_times)  # a few dozen floats: numpy's call costs more than the sort

    def _run(self, batch: list[dict]) -> list[tuple[str, Result]]:
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
            result = self._result(q["query"], "OK", None, q["routed"], compute, started,
                                  [to_tensor(np.asarray(out)[rows]) for out in outputs])
            results.append((q["topic"], result))
        return results

    def _result(self, query: dict, status: str, error: str | None, routed: dict, compute_ms: float = 0.0,
                compute_started: float | None = None, outputs: list[dict] | None = None) -> Result:
        result = result_for(self.hosted.variant, query, status, error, routed, compute_ms, compute_started, outputs)
        overrun = estimate_overrun_ms(routed, result.completed_at, self.serving_since)
        if overrun is not None and status in ("OK", "DEADLINE_EXCEEDED"):  # the estimate was about these
            self._overruns.append(overrun)
        return result

    def _produce(self, topic: str, result: Result) -> None:
        payload = result.encode(self.codec)
        while True:
            try:
                self.producer.produce(topic, key=result.query_id.encode(), value=payload,
                                      on_delivery=self._delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _update_lag(self) -> None:
        """Kafka's lag of this replica's partitions, read at most every `LAG_REFRESH_MS`: it is
        reported once a second, and reading it (the assignment, positions and watermarks of every
        partition) before each run took 46% of a worker's time at batch 1 (profiled flood)."""
        now = now_ms()
        if now - self._lag_at < LAG_REFRESH_MS:
            return
        self._lag_at = now
        try:
            lag = 0
            for tp in self.consumer.position(self.consumer.assignment()):
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag += max(high - tp.offset, 0)
            self.lag = lag
        except KafkaException:  # the assignment changes under a rebalance; the next call will do
            return
