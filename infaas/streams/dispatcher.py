"""The dispatcher: a Faust agent on `infaas.queries` that validates each query, selects a variant
with the INFaaS policy, and publishes the query to that variant's topic (or answers at once with
an error status). Undecodable bytes go to the dead-letter topic. The agent never dies on input.

The consumer side is Faust (group `<prefix>-dispatcher`, so dispatchers scale out by adding
processes); outputs go through one librdkafka producer, flushed before Faust acknowledges the
batch, so an offset is committed only after everything it caused was delivered (at-least-once).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from confluent_kafka import KafkaException

from .. import metrics
from ..catalog import NAME_RE
from ..policies.selection import OK, Decision, Request, least_utilized_worker, select
from ..policies.snapshot import ACTIVE, Snapshot, VariantLive
from ..schemas.codec import DecodeError, EncodeError, default_codec
from ..schemas.messages import DeadLetter, Result, WorkerCommand
from ..settings import Settings
from ..tensors import TensorError, check_input, from_tensor
from ..views import SystemView

log = logging.getLogger(__name__)

MAX_QUERY_ROWS = 1024
FLOAT32_SLACK = 1e-6
QUERY_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Error texts and the names they echo are cut to these lengths (valid ids and names are shorter), so an
# error result or dead letter always fits in a Kafka message whatever a client sent: one the producer
# refused would stop the agent on that query, again and again.
MAX_ECHO = 256
MAX_TEXT = 1000
# 9999-12-31T23:59:59.999Z: a later sent_at is no time, and its deadline would overflow an Avro long.
MAX_TIMESTAMP_MS = 253_402_300_799_999
# A variant routed to within this window that is now unloaded is checked for queries left in its
# topic, once its last routed query has had time to be delivered.
STRANDED_WINDOW_MS = 120_000
DELIVERED_AFTER_MS = 5_000
TOPIC_PATIENCE_S = 30.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


class Rejected(Exception):
    def __init__(self, status: str, error: str, decision: Decision | None = None):
        super().__init__(error)
        self.status, self.error, self.decision = status, error, decision


def now_ms() -> int:
    return int(time.time() * 1000)


class Dispatcher:
    """Per-message logic, independent of Faust so it can be driven and measured directly."""

    def __init__(self, settings: Settings, view: SystemView):
        self.settings = settings
        self.view = view
        self.codec = default_codec()
        self.known_topics: set[str] = set()
        self.counts = {"routed": 0, "rejected": 0, "dead": 0, "loads": 0}
        self._memo_of: Snapshot | None = None
        self._decisions: dict[Request, Decision] = {}
        # Cold variants routed to while no worker of their hardware was ready: loaded once one is.
        self.unplaced: dict[str, str] = {}  # variant -> the reason it was chosen
        self.routed_at: dict[str, int] = {}  # variant -> when a query was last routed to it (ms)

    # --- entry point --------------------------------------------------------------------------
    def handle(self, payload: bytes, source: tuple[str, int, int] = ("", -1, -1),
               key: bytes | None = None) -> list[Outgoing]:
        """`key`: the message's key, the query's id where the client keyed it so (`infaas trace` then finds
        a query dead-lettered here for bytes that do not decode)."""
        try:
            name, record = self.codec.decode(payload, expected="Query")
        except DecodeError as err:
            return [self.dead_letter(payload, source, err.reason, key)]
        try:
            # A query written with an older schema version is re-encoded; a current one is wrapped as is.
            current = payload if payload[:10] == self.codec.schema("Query").header else None
            return self._route(record, current)
        except Rejected as rejected:
            self.counts["rejected"] += 1
            metrics.SHED.labels(rejected.status).inc()
            return self._reply_error(record, rejected)
        except Exception as err:  # a bug must cost one query, never the agent
            log.exception("query %s failed", record.get("query_id"))
            return self._reply_error(record, Rejected("INTERNAL_ERROR", f"dispatcher error: {type(err).__name__}"))

    # --- validation and routing ---------------------------------------------------------------
    def _route(self, record: dict, payload: bytes | None = None) -> list[Outgoing]:
        snapshot = self.view.snapshot
        request = self._validate(record)
        slo = request.latency_ms
        request, spent = time_left(request, record["sent_at"])
        decision = self._decide(snapshot, request)
        if not decision.ok:
            note = f" ({spent} ms of the SLO had passed before the dispatcher read the query)" if spent else ""
            raise Rejected(decision.status, decision.reason + note, decision)
        out = []
        if decision.load_on is not None:
            out.append(self._load_command(decision, snapshot))
        elif not snapshot.live_of(decision.variant_id).loaded:
            # No worker with room for it: selection leaves it to the scaler (the simulator waits for a new
            # worker), but no live scaler is told of it, so a ready worker of its hardware, however full,
            # loads it now rather than at the next timer tick (up to a second later) with the query waiting.
            self.unplaced.setdefault(decision.variant_id, decision.reason)
            out += self.place_unplaced()
            if decision.variant_id in self.unplaced:
                # Believed loading, as in the simulator: the next queries of the task (other classes) wait on
                # it too, rather than each class loading its own cheapest variant while no worker is ready.
                self.view.believe(decision.variant_id, VariantLive(status=ACTIVE, replicas=1,
                                                                   loaded_at_ms=snapshot.at_ms))
        self.routed_at[decision.variant_id] = snapshot.at_ms
        if decision.prefetch is not None and decision.prefetch_on is not None:  # a cheaper variant for the class
            out.append(self._load_command(decision, snapshot, decision.prefetch, decision.prefetch_on))
        deadline = record["sent_at"] + int(slo) if slo is not None else None
        stamp = {"variant_id": decision.variant_id, "deadline_at": deadline, "dispatched_at": now_ms(),
                 "estimated_ms": float(decision.estimated_ms), "reason": decision.reason}
        value = (self.codec.encode_wrapping("RoutedQuery", payload, stamp) if payload is not None
                 else self.codec.encode("RoutedQuery", {"query": record, **stamp}))
        out.append(Outgoing(self.settings.variant_topic(decision.variant_id), record["query_id"].encode(), value))
        self.view.note_routed(decision.variant_id)  # counts in the variant's queue until the next report
        metrics.ROUTED.labels(decision.variant_id).inc()
        self.counts["routed"] += 1
        return out

    def _decide(self, snapshot: Snapshot, request: Request) -> Decision:
        """`select` is a pure function of (snapshot, request): within one snapshot, queries with the
        same requirements get the same decision, so it is computed once per requirement class."""
        if self._memo_of is not snapshot:
            self._memo_of, self._decisions = snapshot, {}
        decision = self._decisions.get(request)
        if decision is None:
            decision = self._decisions[request] = select(snapshot, request)
        return decision

    def _validate(self, record: dict) -> Request:
        catalog = self.view.catalog
        if not QUERY_ID_RE.fullmatch(record["query_id"]):
            raise Rejected("BAD_INPUT", "query_id must be 1-128 characters of letters, digits and ._:-")
        if not 0 <= record["sent_at"] <= MAX_TIMESTAMP_MS:
            raise Rejected("BAD_INPUT", f"sent_at = {record['sent_at']} is not a time (ms since 1970, before 10000)")
        app = record["app_id"]
        if self.reply_topic(record) is None:
            raise Rejected("BAD_INPUT", f"reply_topic {record['reply_topic']!r:.100} is not one app {app!r:.100} may use")
        if app not in catalog.apps:
            raise Rejected("BAD_INPUT", f"unknown app_id {app!r:.100}: create it first (`infaas app create {app:.100}`)")
        task = self._task_of(record)
        try:
            inputs = from_tensor(record["inputs"], self.settings.max_input_bytes)
            info = catalog.tasks.get(task)
            if info is None:
                raise Rejected("UNKNOWN_MODEL", unknown_task(task))
            check_input(inputs, info.input_dtype, info.input_shape, MAX_QUERY_ROWS)
        except TensorError as err:
            raise Rejected("BAD_INPUT", f"inputs: {err}") from None
        min_accuracy = _requirement(record, "min_accuracy", 0.0, 1.0)
        if min_accuracy is not None:  # float32 on the wire: a demand equal to a variant's accuracy must match it
            min_accuracy = max(min_accuracy - FLOAT32_SLACK, 0.0)
        return Request(app_id=app, task=task, model=record["model"], variant=record["variant"],
                       batch=int(inputs.shape[0]), min_accuracy=min_accuracy,
                       latency_ms=_requirement(record, "latency_ms", 1e-3, 1e7),
                       max_cost=_requirement(record, "max_cost", 0.0, 1e9))

    def _task_of(self, record: dict) -> str:
        """The task a query is for, from whichever of task/model/variant it names (they must agree)."""
        catalog = self.view.catalog
        tasks = set()
        if record["variant"] is not None:
            variant = catalog.variants.get(record["variant"])
            if variant is None or not variant.visible_to(record["app_id"]):
                raise Rejected("UNKNOWN_MODEL", f"no variant {record['variant']!r:.100} is registered for this app")
            tasks.add(variant.task)
        if record["model"] is not None:
            task = catalog.model_visible(record["model"], record["app_id"])
            if task is None:
                raise Rejected("UNKNOWN_MODEL", f"no model {record['model']!r:.100} is registered for this app")
            tasks.add(task)
        if record["task"] is not None:
            if record["task"] not in catalog.tasks or not catalog.task_visible(record["task"], record["app_id"]):
                raise Rejected("UNKNOWN_MODEL", unknown_task(record["task"]))
            tasks.add(record["task"])
        if not tasks:
            raise Rejected("BAD_INPUT", "the query names no task, model or variant")
        if len(tasks) > 1:
            raise Rejected("BAD_INPUT", f"the query's task, model and variant disagree (tasks {sorted(tasks)})")
        return tasks.pop()

    def unloaded_since_routed(self) -> list[str]:
        """Variants routed to within STRANDED_WINDOW_MS that no worker hosts now: a query routed just
        before its variant was unloaded (retired, or its worker gone) may still wait in its topic."""
        snapshot = self.view.snapshot
        for variant_id, at in list(self.routed_at.items()):
            if snapshot.at_ms - at > STRANDED_WINDOW_MS:
                del self.routed_at[variant_id]
        return [v for v, at in self.routed_at.items() if snapshot.at_ms - at >= DELIVERED_AFTER_MS
                and v not in self.unplaced and not snapshot.live_of(v).loaded]

    def place_unplaced(self) -> list[Outgoing]:
        """LOAD commands for the cold variants that queries wait on with no worker asked to load them
        (they were routed before any worker of their hardware was ready); called on a timer, since
        no further query may come."""
        snapshot, out = self.view.snapshot, []
        for variant_id, reason in list(self.unplaced.items()):
            variant, state = snapshot.variants.get(variant_id), snapshot.live_of(variant_id)
            if variant is None or (state.loaded and state.workers):  # gone, or loaded by someone else
                self.unplaced.pop(variant_id)
                continue
            worker = least_utilized_worker(snapshot, variant.hardware, variant.peak_memory_mb)
            if worker is not None:
                self.unplaced.pop(variant_id)
                decision = Decision(OK, variant_id, f"{reason}; queries wait on it", load_on=worker.worker_id)
                out.append(self._load_command(decision, snapshot))
        return out

    # --- outputs ------------------------------------------------------------------------------
    def _load_command(self, decision: Decision, snapshot: Snapshot, variant_id: str | None = None,
                      worker_id: str | None = None) -> Outgoing:
        """Ask a worker to load the chosen inactive variant (or the one to prefetch, `variant_id` on
        `worker_id`); route on as if it were loading."""
        variant_id, worker_id = variant_id or decision.variant_id, worker_id or decision.load_on
        prefetch = variant_id != decision.variant_id  # not routed to until it serves: counted as loading
        self.view.believe(variant_id, VariantLive(status=ACTIVE, replicas=1, workers=(worker_id,),
                                                  loaded_at_ms=snapshot.at_ms, loading=int(prefetch)))
        self.counts["loads"] += 1
        command = WorkerCommand(command_id=uuid.uuid4().hex, at=now_ms(), action="LOAD", worker_id=worker_id,
                                hardware=None, variant_id=variant_id, replicas=1,
                                reason=f"dispatcher: {decision.reason}")
        return Outgoing(self.settings.topic("control"), worker_id.encode(), command.encode(self.codec))

    def _reply_error(self, record: dict, rejected: Rejected) -> list[Outgoing]:
        decision = rejected.decision
        result = Result(query_id=record["query_id"][:MAX_ECHO], app_id=record["app_id"], status=rejected.status,
                        error=rejected.error[:MAX_TEXT], outputs=[], model=_echo(record.get("model")),
                        variant=_echo(record.get("variant")), hardware=None, accuracy=None,
                        latency_ms=float(max(now_ms() - record["sent_at"], 0)), queue_ms=0.0, compute_ms=0.0,
                        best_accuracy_within_slo=decision.best_accuracy_within_slo if decision else None,
                        fastest_latency_ms=decision.fastest_latency_ms if decision else None, completed_at=now_ms())
        topic, key = self.reply_topic(record), record["query_id"][:MAX_ECHO].encode()  # the key: `infaas trace` finds it
        if topic is None:
            return [self.dead_letter(self.codec.encode("Query", record), ("", -1, -1),
                                     f"{rejected.status}: {rejected.error}; and no valid reply topic", key)]
        try:
            return [Outgoing(topic, key, result.encode(self.codec))]
        except EncodeError as err:
            return [self.dead_letter(b"", ("", -1, -1), f"cannot encode the error result: {err.reason}", key)]

    def reply_topic(self, record: dict) -> str | None:
        """The query's reply topic, if it is one this app may write to."""
        app = record["app_id"]
        if not NAME_RE.fullmatch(app or ""):
            return None
        own = self.settings.results_topic(app)
        topic = record.get("reply_topic") or own
        if topic != own and not (topic.startswith(own + ".") and re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic)):
            return None
        return topic

    def dead_letter(self, payload: bytes, source: tuple[str, int, int], reason: str,
                    key: bytes | None = None) -> Outgoing:
        """`key`: the query's id where it is known."""
        self.counts["dead"] += 1
        metrics.DEAD_LETTERS.inc()
        log.warning("dead letter from %s[%s]@%s: %s", *source, reason)
        letter = DeadLetter.about(source, reason, "dispatcher", payload, now_ms())
        return Outgoing(self.settings.topic("deadletter"), key, letter.encode(self.codec))


def time_left(request: Request, sent_at: int) -> tuple[Request, int]:
    """The request with the part of its SLO still left, and the ms already spent. The SLO counts from
    when the client sent the query (the worker's deadline is `sent_at` + SLO), so the variant's queue
    and run must fit in what is left when the dispatcher decides; measured under contention, queries
    reached the dispatcher up to 140 ms after they were sent, and one admitted on the whole 200 ms
    then missed its deadline at the worker. A client clock ahead of this one counts as no time spent."""
    if request.latency_ms is None:
        return request, 0
    spent = min(max(now_ms() - sent_at, 0), int(request.latency_ms))
    if spent == 0:
        return request, 0
    return replace(request, latency_ms=max(request.latency_ms - spent, 1e-3), class_slo_ms=request.latency_ms), spent


def _echo(name: str | None) -> str | None:
    return None if name is None else name[:MAX_ECHO]


def unknown_task(task: str) -> str:
    return f"task {task!r:.100} has no models this app may use"


def _requirement(record: dict, name: str, low: float, high: float) -> float | None:
    value = record[name]
    if value is None:
        return None
    if not math.isfinite(value) or not low <= value <= high:
        raise Rejected("BAD_INPUT", f"{name} = {value!r} is outside [{low:g}, {high:g}]")
    return float(value)


# --- the Faust service ----------------------------------------------------------------------------
class DeliveryTracker:
    """Acknowledge a batch of consumed queries only once everything it caused was delivered.

    Batches are produced without waiting, so the next batch is handled while the previous one is
    in flight; a background thread serves the producer's delivery reports, and the batch's events
    are acknowledged (their offsets become committable) when its last message is acknowledged by
    Kafka and every batch before it was. A message whose delivery fails is produced again: nothing
    is acknowledged undelivered.
    The reports are served every `HAND_OVER_S`, and the batches completed by then are handed to the
    event loop together: served as each report came, at 260 queries/s (each its own batch) the thread
    and the loop woke once per query, and a wake-up of the loop per batch cost a tenth of the
    dispatcher's CPU at 1,400 queries/s (profiled). Acknowledged events only become committable
    (Faust commits every 0.5 s), so the wait delays nothing a client sees.
    """

    HAND_OVER_S = 0.02

    def __init__(self, producer, loop, ack_batch,
                 dead_letter: Callable[[bytes, tuple[str, int, int], str, bytes | None], Outgoing]):
        self.producer, self.loop, self.ack_batch, self.dead_letter = producer, loop, ack_batch, dead_letter
        self._batches: dict[int, list] = {}  # batch -> [messages not yet delivered, its events]
        self._done: list = []  # events of the batches delivered since the last hand-over
        self._lock = threading.Lock()
        self._next = 0  # the number of the next batch sent
        self._oldest = 0  # the oldest batch not handed over yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name="dispatcher-deliveries", daemon=True)
        self._thread.start()

    def send(self, outgoing: list[Outgoing], events: list) -> None:
        """Call from the event loop's thread."""
        with self._lock:  # registered before producing: a report may come back at once
            batch, self._next = self._next, self._next + 1
            self._batches[batch] = [len(outgoing), events]
            self._release()  # nothing to deliver: done once the batches before it are
        report = self._reporter(batch)  # one callback per batch, not per message
        for item in outgoing:
            self._produce(item.topic, item.key, item.value, report)

    def _reporter(self, batch: int):
        def report(err, message) -> None:
            if err is not None:
                log.warning("delivery to %s failed (%s): producing it again", message.topic(), err.str())
                self._produce(message.topic(), message.key(), message.value(), report)
            else:
                self._delivered(batch)
        return report

    def _produce(self, topic: str, key: bytes | None, value: bytes, report) -> None:
        letter = None
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=report)
                return
            except BufferError:  # the local queue is full: deliveries drain it
                self.producer.poll(0.05)
            except KafkaException as err:
                if letter is not None:
                    raise
                # Its topic is gone (a model deleted while queries were routed to it): raised in a delivery
                # report, this stopped the thread that serves them, and no batch was acknowledged again.
                letter = self.dead_letter(value, (topic, -1, -1), f"cannot produce to {topic}: {err.args[0].str()}", key)
                topic, value = letter.topic, letter.value

    def _delivered(self, batch: int) -> None:
        with self._lock:
            self._batches[batch][0] -= 1
            self._release()

    def _release(self) -> None:
        """Hand over the delivered batches in the order they were sent (call under the lock). Batches
        to different topics are delivered in any order, and Faust commits a partition past the message
        at its committed offset while it is still in flight once the next one is acknowledged (its
        check is off by one, and absent before a first commit): a crash then would lose that message."""
        while self._oldest < self._next and self._batches[self._oldest][0] == 0:
            self._done += self._batches.pop(self._oldest)[1]
            self._oldest += 1

    def _hand_over(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        if done:
            self.loop.call_soon_threadsafe(self.ack_batch, done)

    def _serve_reports(self) -> None:
        while not self._stop.wait(self.HAND_OVER_S):
            self.producer.poll(0)
            self._hand_over()

    def close(self, timeout: float = 30.0) -> None:
        self.producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=5)
        self._hand_over()


def make_app(settings: Settings, dispatcher: Dispatcher, web_port: int | None = None):
    import asyncio

    import faust

    from .. import bus
    from .faust_support import SkippedOffsets, faust_app

    app = faust_app(settings, "dispatcher", web_port)
    queries = app.topic(settings.topic("queries"), value_serializer="raw", key_serializer="raw")
    producer = bus.producer(settings)
    skipped = SkippedOffsets(app, settings)

    @app.agent(queries)
    async def dispatch(stream: faust.Stream) -> None:
        loop = asyncio.get_running_loop()

        async def ack_all(events: list) -> None:
            for event in events:
                await stream.ack(event)

        def ack_batch(events: list) -> None:
            loop.create_task(ack_all(events))  # one task per batch, not per event

        tracker = DeliveryTracker(producer, loop, ack_batch, dispatcher.dead_letter)
        try:
            # Events are acknowledged by the tracker, after delivery (at-least-once), not here.
            async for events in ready_batches(stream.noack(), 2000):
                outgoing: list[Outgoing] = []
                for event in events:
                    message = event.message
                    for earlier in await skipped.read_back(message):  # acknowledged with this batch
                        outgoing += dispatcher.handle(earlier.value(),
                                                      (earlier.topic(), earlier.partition(), earlier.offset()),
                                                      earlier.key())
                    outgoing += dispatcher.handle(event.value, (message.topic, message.partition, message.offset),
                                                  event.key)
                missing = {o.topic for o in outgoing} - dispatcher.known_topics
                if missing:  # rare: a variant or reply topic used for the first time
                    await ensure_topics_patiently(settings, missing)
                    dispatcher.known_topics |= missing
                tracker.send(outgoing, list(events))
        finally:
            tracker.close()

    @app.timer(interval=1.0)
    async def place_unplaced() -> None:
        loop = asyncio.get_running_loop()
        for variant_id in dispatcher.unloaded_since_routed():
            left = await loop.run_in_executor(None, bus.uncommitted_queries, settings, variant_id)
            if left == 0:  # nothing stranded; a new route starts the watch again
                dispatcher.routed_at.pop(variant_id, None)
            else:
                log.warning("%d queries wait in the topic of %s, which no worker hosts now: loading it", left,
                            variant_id)
                dispatcher.unplaced.setdefault(variant_id, "queries were left in its topic when it was unloaded")
        for command in dispatcher.place_unplaced():
            producer.produce(command.topic, key=command.key, value=command.value)
        producer.poll(0)

    return app


async def ready_batches(stream, max_events: int):
    """Batches of the events already queued (up to `max_events`), yielded as soon as the queue runs
    dry: a lone query goes out at once, a burst goes out together. Faust's `take(within=...)` waits
    on a timer instead; polling it every 0.5 ms kept a core 17% busy with nothing to do."""
    queue = stream.channel.queue
    batch: list = []
    async for event in stream.events():
        batch.append(event)
        if len(batch) >= max_events or queue.empty():
            yield batch
            batch = []


async def ensure_topics_patiently(settings: Settings, topics: set[str]) -> None:
    """Create the topics, asking again for up to TOPIC_PATIENCE_S while Kafka cannot: an error raised
    here stops the agent with its batch unsent, and Faust can commit past a batch never acknowledged
    (see `DeliveryTracker._release`). A topic that cannot be made at all (a name Kafka refuses) still raises."""
    from .faust_support import call_patiently
    await call_patiently(TOPIC_PATIENCE_S, ensure_reply_and_variant_topics, settings, topics)


def ensure_reply_and_variant_topics(settings: Settings, topics: set[str]) -> None:
    from .. import bus
    specs = {}
    for topic in topics:
        if topic.startswith(settings.topic("variant.")):
            specs[topic] = bus.TopicSpec(settings.variant_partitions)
        elif topic.startswith(settings.topic("results.")):
            specs[topic] = bus.TopicSpec(settings.result_partitions)
    if specs:
        bus.ensure_topics(settings, specs)


def run(settings: Settings, web_port: int | None = None) -> int:
    """`infaas dispatcher`: run until interrupted."""
    from .faust_support import run_app
    view = SystemView(settings).start()
    dispatcher = Dispatcher(settings, view)
    app = make_app(settings, dispatcher, web_port)
    try:
        return run_app(app, "dispatcher")
    finally:
        view.stop()
