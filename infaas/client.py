"""The client: produce `Query` messages, match `Result`s on the reply topic by `query_id`.

    with InfaasClient(app_id="demo") as client:
        result = client.query(x, task="digits-classification", min_accuracy=0.95, latency_ms=20)
        print(result.status, result.prediction, result.variant)

Many queries may be in flight (`submit` returns a future; `aquery` is the asyncio form).
Results arrive at least once; a duplicate of an answered query is dropped and counted. While the
service sheds a class of queries for load, the client refuses part of that class itself, at once, as
THROTTLED (`AdaptiveThrottle`; setting `client_throttle_k`, 0 turns it off).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from . import bus
from .catalog import check_name
from .errors import InfaasError
from .schemas.codec import DecodeError, default_codec
from .settings import Settings, load_settings
from .tensors import from_tensor, to_tensor

log = logging.getLogger(__name__)


class QueryTimeout(InfaasError, TimeoutError):
    """No result arrived within the timeout."""


class QueryNotSent(InfaasError, RuntimeError):
    """Kafka did not accept the query (the broker stayed unreachable past the delivery timeout)."""


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    status: str
    error: str | None
    outputs: list[np.ndarray]
    model: str | None
    variant: str | None
    hardware: str | None
    accuracy: float | None
    latency_ms: float
    queue_ms: float
    compute_ms: float
    best_accuracy_within_slo: float | None = None
    fastest_latency_ms: float | None = None
    received_at: float = field(default=0.0, compare=False)  # client clock, epoch seconds

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def prediction(self) -> np.ndarray | None:
        """Top-1 class per input row (argmax of the first 2-D float output, or an integer output)."""
        for out in self.outputs:
            if out.dtype.kind in "iu" and out.ndim == 1:
                return out
        for out in self.outputs:
            if out.dtype.kind == "f" and out.ndim == 2:
                return out.argmax(axis=1)
        return None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> QueryResult:
        return cls(record["query_id"], record["status"], record["error"],
                   [from_tensor(t) for t in record["outputs"]], record["model"], record["variant"],
                   record["hardware"], record["accuracy"], record["latency_ms"], record["queue_ms"],
                   record["compute_ms"], record["best_accuracy_within_slo"], record["fastest_latency_ms"],
                   time.time())


def now_ms() -> int:
    return int(time.time() * 1000)


class RecentIds:
    """Ids seen within the last `window_s` seconds: the duplicate filter's memory, bounded in time.

    A duplicate result comes from a query served again after a worker crashed, which happens within
    seconds to minutes of the first answer; ids older than the window are forgotten, so a long-lived
    client does not grow without bound."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when, oldest first

    def add(self, key: str) -> None:
        now = self.clock()
        self._seen[key] = now
        self._seen.move_to_end(key)
        while self._seen and next(iter(self._seen.values())) < now - self.window_s:
            self._seen.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        seen = self._seen.get(key)
        return seen is not None and seen >= self.clock() - self.window_s

    def __len__(self) -> int:
        return len(self._seen)


THROTTLED = "THROTTLED"


def shed_for_load(result: QueryResult, latency_ms: float | None) -> bool:
    """Whether the service refused a query because it was busy: a deadline missed in a queue, or no
    variant meeting the SLO now although one meets it idle (the dispatcher's fastest latency at the
    accuracy is within the SLO). A refusal the requirements themselves cause (no variant ever fast or
    accurate enough) is not load."""
    if result.status == "DEADLINE_EXCEEDED":
        return True
    return (result.status == "NO_FEASIBLE_VARIANT" and latency_ms is not None
            and result.fastest_latency_ms is not None and result.fastest_latency_ms <= latency_ms)


class AdaptiveThrottle:
    """Client-side adaptive throttling (Google's SRE book, "Handling Overload"), per class of queries
    (the same requirements). Over the last `window_s`, a query is refused here with probability
    max(0, (requests - k * accepted) / (requests + 1)), counting only answers that were served (OK)
    or shed for load, and the refusals themselves; and only once the service shed at least
    `min_shed` of the class in the window. Without that floor a class of a few queries a second was
    refused on a handful of sheds (the refusals, counted as requests, then kept it refused until the
    window passed): 58 queries of a live trace replay were THROTTLED after 8 sheds in all.

    Under overload most of what the service would shed anyway never costs the broker, the dispatcher
    or this client anything, and the cores they share with the workers serve queries instead: at 3x one replica's capacity on 2 cores, the
    dispatcher alone spent half a core refusing queries (measured). With k = 2 the service still
    sees up to twice what it accepts, so it sees the demand rise, and within the window after the
    load falls no query is refused. (The book keeps 2 minutes; 5 s reacts within a scaler's step.)"""

    def __init__(self, k: float, window_s: float = 5.0, min_shed: int = 20, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random):
        self.k, self.window_s, self.min_shed, self.clock, self.draw = k, window_s, min_shed, clock, draw
        # class -> [[second, requests, accepted, shed by the service], ...], oldest first
        self._counts: dict[tuple, deque] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def refuses(self, key: tuple) -> str | None:
        """Why a query of this class is refused here (counted as a request), or None to send it."""
        if self.k <= 0:
            return None
        with self._lock:
            requests, accepted, shed = self._totals(key)
            if shed < self.min_shed:
                return None
            chance = max(0.0, (requests - self.k * accepted) / (requests + 1))
            if chance <= 0 or self.draw() >= chance:
                return None
            self._count(key, accepted=False)
        return (f"refused by the client, not sent: the service accepted {accepted} of the last {requests} queries "
                f"with these requirements in {self.window_s:g} s (adaptive throttling, client_throttle_k = {self.k:g}; "
                f"refused with probability {chance:.2f})")

    def record(self, key: tuple, accepted: bool) -> None:
        """An answer of the service: served (accepted) or shed for load."""
        if self.k > 0:
            with self._lock:
                self._count(key, accepted, shed=not accepted)

    def _count(self, key: tuple, accepted: bool, shed: bool = False) -> None:
        second = int(self.clock())
        buckets = self._counts.setdefault(key, deque())
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0, 0])
        buckets[-1][1] += 1
        buckets[-1][2] += int(accepted)
        buckets[-1][3] += int(shed)

    def _totals(self, key: tuple) -> tuple[int, int, int]:
        now = self.clock()
        if now - self._swept > self.window_s:  # classes no longer queried are forgotten
            self._swept = now
            for other in list(self._counts):
                self._expire(other, now)
        buckets = self._expire(key, now)
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets), sum(b[3] for b in buckets)

    def _expire(self, key: tuple, now: float) -> deque:
        buckets = self._counts.get(key, deque())
        while buckets and buckets[0][0] <= now - self.window_s:
            buckets.popleft()
        if not buckets:
            self._counts.pop(key, None)
        return buckets

    def __len__(self) -> int:
        return len(self._counts)


class InfaasClient:
    def __init__(self, settings: Settings | None = None, app_id: str = "demo", reply_topic: str | None = None,
                 timeout_s: float = 30.0, duplicate_window_s: float = 300.0):
        self.settings = settings or load_settings()
        self.app_id = check_name("app", app_id)
        self.reply_topic = reply_topic or self.settings.results_topic(app_id)
        self.timeout_s = timeout_s
        self.codec = default_codec()
        self.duplicates_dropped = 0
        self.undecodable = 0
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._answered = RecentIds(duplicate_window_s)  # answered query ids, to count duplicates
        self.throttle = AdaptiveThrottle(self.settings.client_throttle_k)
        self.throttled = 0
        self._classes: dict[str, tuple] = {}  # query id -> its class (requirements), for the throttle
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ensure_reply_topic()
        # Keep retrying a query while the broker is away (it restarts, fails over) for as long as the
        # caller waits for the result; a query that still cannot be delivered fails explicitly.
        self._producer = bus.producer(self.settings, **{"message.timeout.ms": int(max(timeout_s, 30.0) * 1000)})
        self._consumer = self._listen()
        self._thread = threading.Thread(target=self._receive, name="infaas-client-results", daemon=True)
        self._thread.start()

    def _ensure_reply_topic(self) -> None:
        """Create the reply topic if it is missing. On a secure stack an app may not create topics:
        its topic then has to exist already (`infaas app create` makes it)."""
        try:
            bus.ensure_topics(self.settings, {self.reply_topic: bus.TopicSpec(self.settings.result_partitions)})
        except bus.BusError as err:
            raise bus.BusError(f"reply topic {self.reply_topic} is missing and cannot be created here ({err}); on a "
                               f"secure stack `infaas app create {self.app_id}` creates the app's topic") from None

    # --- sending ------------------------------------------------------------------------------
    def submit(self, inputs: np.ndarray, *, task: str | None = None, model: str | None = None,
               variant: str | None = None, min_accuracy: float | None = None, latency_ms: float | None = None,
               max_cost: float | None = None, query_id: str | None = None) -> concurrent.futures.Future:
        """Send one query; the future resolves to a QueryResult (or raises QueryTimeout)."""
        if task is None and model is None and variant is None:
            raise ValueError("give a task (model-less), a model, or a variant")
        query_id = query_id or uuid.uuid4().hex
        key = (task, model, variant, min_accuracy, latency_ms, max_cost)
        refused = self.throttle.refuses(key)
        if refused is not None:
            self.throttled += 1
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(QueryResult(query_id, THROTTLED, refused, [], None, None, None, None, 0.0, 0.0, 0.0,
                                          received_at=time.time()))
            return future
        with self._lock:
            self._classes[query_id] = key
        record = {"query_id": query_id, "app_id": self.app_id, "task": task, "model": model, "variant": variant,
                  "inputs": to_tensor(inputs), "min_accuracy": min_accuracy, "latency_ms": latency_ms,
                  "max_cost": max_cost, "reply_topic": self.reply_topic, "sent_at": now_ms()}
        future = self.send_raw(query_id, self.codec.encode("Query", record))
        if future.done():  # answered here (too large): nothing will come back for the throttle
            with self._lock:
                self._classes.pop(query_id, None)
        return future

    def send_raw(self, query_id: str, payload: bytes) -> concurrent.futures.Future:
        """Send pre-encoded bytes (e.g. for load generators); the result is matched by query_id."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if len(payload) > self.settings.max_message_bytes:  # Kafka would refuse it: answer here, as the service would
            future.set_result(self._too_large(query_id, len(payload)))
            return future
        with self._lock:
            self._pending[query_id] = future
        while True:
            try:
                self._producer.produce(self.settings.topic("queries"), key=query_id.encode(), value=payload,
                                       on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self._producer.poll(0)
        return future

    def _too_large(self, query_id: str, size: int) -> QueryResult:
        limits = self.settings
        error = (f"query of {size / (1 << 20):.1f} MiB is over the Kafka message limit of {limits.max_message_mb} MiB "
                 f"(setting max_message_mb); inputs may be at most {limits.max_input_mb} MiB (setting max_input_mb)")
        return QueryResult(query_id, "BAD_INPUT", error, [], None, None, None, None, 0.0, 0.0, 0.0,
                           received_at=time.time())

    def _delivered(self, err, message) -> None:
        if err is None:
            return
        query_id = message.key().decode()
        with self._lock:
            future = self._pending.pop(query_id, None)
            self._classes.pop(query_id, None)
        if future is not None and not future.done():
            future.set_exception(QueryNotSent(f"query {query_id} was not delivered to Kafka: {err.str()}"))

    def query(self, inputs: np.ndarray, timeout_s: float | None = None, **requirements) -> QueryResult:
        future = self.submit(inputs, **requirements)
        self._producer.flush(5)
        return self.wait(future, timeout_s)

    def wait(self, future: concurrent.futures.Future, timeout_s: float | None = None) -> QueryResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._forget(future)
            raise QueryTimeout(f"no result within {timeout:.1f} s on {self.reply_topic}; is `infaas serve` "
                               "running?") from None

    async def aquery(self, inputs: np.ndarray, timeout_s: float | None = None, **requirements) -> QueryResult:
        future = self.submit(inputs, **requirements)
        self._producer.poll(0)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            self._forget(future)
            raise QueryTimeout(f"no result within {timeout:.1f} s on {self.reply_topic}") from None

    def flush(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- receiving ----------------------------------------------------------------------------
    def _listen(self):
        """Read every partition of the reply topic from its current end: no group join to wait for."""
        consumer = bus.consumer(self.settings, f"{self.settings.topic_prefix}.client.{uuid.uuid4().hex[:8]}")
        metadata = consumer.list_topics(self.reply_topic, timeout=10).topics[self.reply_topic]
        partitions = []
        for pid in metadata.partitions:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.reply_topic, pid), timeout=10)
            except KafkaException:
                high = OFFSET_END
            partitions.append(TopicPartition(self.reply_topic, pid, high))
        consumer.assign(partitions)
        return consumer

    def _receive(self) -> None:
        """Every pending query waits on this thread: no error in a message or from Kafka may end it."""
        while not self._stop.is_set():
            try:
                messages = bus.consume_ready(self._consumer, 500, 0.1)  # wakes as soon as a result arrives
            except KafkaException as err:
                log.warning("reading results from %s failed (%s); trying again", self.reply_topic, err)
                self._stop.wait(0.5)
                continue
            for message in messages:
                if not message.error():
                    self._deliver(message.value())

    def _deliver(self, payload: bytes) -> None:
        try:
            record = self.codec.decode_as("Result", payload)
        except DecodeError:
            self.undecodable += 1
            return
        query_id = record["query_id"]
        with self._lock:
            future = self._pending.pop(query_id, None)
            if future is None:
                if query_id in self._answered:
                    self.duplicates_dropped += 1
                return  # someone else's query on a shared reply topic
            self._answered.add(query_id)
            key = self._classes.pop(query_id, None)
        try:
            result = QueryResult.from_record(record)
        except ValueError as err:  # outputs that are not tensors (TensorError) or not of their shape
            self.undecodable += 1
            result = QueryResult.from_record({**record, "status": "INTERNAL_ERROR", "outputs": [],
                                              "error": f"the result's outputs cannot be read: {err}"})
        if key is not None and (result.ok or shed_for_load(result, latency_ms=key[4])):
            self.throttle.record(key, accepted=result.ok)
        try:
            future.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled by its caller meanwhile
            pass

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            for query_id, pending in list(self._pending.items()):
                if pending is future:
                    del self._pending[query_id]
                    self._classes.pop(query_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._producer.flush(5)
        self._consumer.close()

    def __enter__(self) -> InfaasClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
