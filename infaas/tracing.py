"""Where a query is: `infaas trace QUERY_ID` follows one query through the topics it passes (the
queries topic, its variant's topic, the reply topics, the dead-letter topic) and the committed offsets
of the consumer groups that read them, so a query that got no answer can be placed: not dispatched yet,
routed and waiting in a queue, consumed and committed without an answer (lost), dead-lettered (with
the reason), or answered.

Read without joining any group (partitions are assigned, from the first offset at `since_ms`), so
tracing disturbs nothing that serves."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from . import bus
from .schemas.codec import DecodeError, default_codec
from .settings import Settings

SCAN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Hop:
    """The query's message in one topic, and how far the group that reads it there has committed."""
    topic: str
    partition: int
    offset: int
    at_ms: int
    group: str | None = None  # the consumer group that reads it there (None: read without a group)
    committed: int | None = None  # that group's committed offset in the partition (None: none)
    status: str | None = None  # a result's status

    @property
    def consumed(self) -> bool:
        """Its group committed past it: it was read, and whatever it caused was acknowledged."""
        return self.committed is not None and self.committed > self.offset

    def describe(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset} at {time.strftime('%H:%M:%S', time.localtime(self.at_ms / 1000))}"
        if self.status:
            where += f": {self.status}"
        if self.group:
            where += f"; group {self.group} committed {self.committed if self.committed is not None else 'nothing'}"
        return where


@dataclass(frozen=True)
class QueryTrace:
    query_id: str
    sent: tuple[Hop, ...]  # in the queries topic (more than one: the client sent it again)
    routed: tuple[Hop, ...]  # in variant topics (more than one: routed again after a restart)
    answered: tuple[Hop, ...]  # in reply topics
    dead: tuple[Hop, ...] = ()  # in the dead-letter topic (status: the reason)

    def verdict(self) -> str:
        if self.answered:
            statuses = ", ".join(sorted({h.status or "?" for h in self.answered}))
            return f"answered ({statuses})" + (f", {len(self.answered)} times" if len(self.answered) > 1 else "")
        if self.dead:
            return f"DEAD-LETTERED: {self.dead[-1].status}"
        if self.routed:
            hop = self.routed[-1]
            if any(h.consumed for h in self.routed):
                return f"LOST at a worker: routed to {hop.topic}, read and committed by its replicas, and never answered"
            return f"waiting: routed to {hop.topic}, not yet read by its replicas (committed {hop.committed})"
        if self.sent:
            hop = self.sent[-1]
            if any(h.consumed for h in self.sent):
                return "LOST at the dispatcher: read and committed, but neither routed nor answered"
            return f"waiting: in {hop.topic}, not yet read by the dispatcher (committed {hop.committed})"
        return "not found: no query with this id was sent in the time searched"

    def lines(self) -> list[str]:
        return ([f"query {self.query_id}: {self.verdict()}"]
                + [f"  sent     {h.describe()}" for h in self.sent]
                + [f"  routed   {h.describe()}" for h in self.routed]
                + [f"  answered {h.describe()}" for h in self.answered]
                + [f"  dead     {h.describe()}" for h in self.dead])


def trace_query(settings: Settings, query_id: str, since_ms: int) -> QueryTrace:
    """The query's path through this deployment's topics, from messages at or after `since_ms`."""
    queries, dead_letters = settings.topic("queries"), settings.topic("deadletter")
    variant_prefix, results_prefix = settings.topic("variant."), settings.topic("results.")
    topics = sorted(t for t in bus.existing_topics(settings)
                    if t in (queries, dead_letters) or t.startswith((variant_prefix, results_prefix)))
    found = _find(settings, topics, query_id.encode(), since_ms)
    codec = default_codec()
    sent, routed, answered, dead = [], [], [], []
    for message in found:
        topic = message.topic()
        if topic == queries:
            sent.append(_hop(settings, message, f"{settings.topic_prefix}-dispatcher"))
        elif topic.startswith(variant_prefix):
            routed.append(_hop(settings, message, topic))  # a variant's replicas' group is its topic's name
        elif topic == dead_letters:
            dead.append(_hop(settings, message, None, _decoded(codec, "DeadLetter", message.value(), "reason")))
        else:
            answered.append(_hop(settings, message, None, _decoded(codec, "Result", message.value(), "status")))
    return QueryTrace(query_id, tuple(sent), tuple(routed), tuple(answered), tuple(dead))


def _decoded(codec, schema: str, value: bytes, field: str) -> str:
    try:
        return str(codec.decode_as(schema, value)[field])
    except DecodeError as err:
        return f"undecodable {schema} ({err.reason})"


def _hop(settings: Settings, message, group: str | None, status: str | None = None) -> Hop:
    committed = None
    if group is not None:
        committed = bus.committed_offsets(settings, group, message.topic(), [message.partition()])[message.partition()]
    return Hop(message.topic(), message.partition(), message.offset(), message.timestamp()[1], group, committed, status)


def _find(settings: Settings, topics: list[str], key: bytes, since_ms: int) -> list:
    """The messages with `key` in `topics`, from `since_ms` up to each partition's end as of now."""
    reader = bus.consumer(settings, f"{settings.topic_prefix}.trace.{uuid.uuid4().hex[:8]}")
    try:
        metadata = reader.list_topics(timeout=10).topics
        partitions = [TopicPartition(t, p, since_ms) for t in topics if t in metadata for p in metadata[t].partitions]
        if not partitions:
            return []
        starts = reader.offsets_for_times(partitions, timeout=10)
        ends = {}
        for tp in starts:
            _, high = reader.get_watermark_offsets(tp, timeout=10)
            if tp.offset != OFFSET_END and 0 <= tp.offset < high:  # OFFSET_END: nothing at or after since_ms
                ends[(tp.topic, tp.partition)] = high
        reader.assign([tp for tp in starts if (tp.topic, tp.partition) in ends])
        found, deadline = [], time.monotonic() + SCAN_TIMEOUT_S
        while ends and time.monotonic() < deadline:
            for message in reader.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                if message.key() == key:
                    found.append(message)
                where = (message.topic(), message.partition())
                if where in ends and message.offset() >= ends[where] - 1:
                    del ends[where]
        if ends:
            raise bus.BusError(f"topics not read to their end within {SCAN_TIMEOUT_S:g} s: "
                               f"{sorted({t for t, _ in ends})}")
        return sorted(found, key=lambda m: m.timestamp()[1])
    except KafkaException as err:
        raise bus.BusError(f"cannot read the topics to trace the query: {err}") from err
    finally:
        reader.close()
