"""Typed messages: one frozen dataclass per Avro record, with `to_record` / `from_record` at the codec
(as confluent-kafka's serializers take `to_dict` / `from_dict`). Nested records (a Query's Tensor, a
RoutedQuery's Query, a WorkerReport's VariantMetrics) are carried as records (dicts).

A message is built in one place with named, typed fields, and the codec checks it against its
schema when it is encoded. `tests/unit/test_messages.py` fails when a dataclass and its `.avsc` drift
apart. The hot path may still pass raw bytes (the dispatcher wraps a query's original bytes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .codec import DEAD_LETTER_PAYLOAD_BYTES, Codec

MAX_REASON = 1000  # characters of a dead letter's reason (it may echo what was sent)

M = TypeVar("M", bound="Message")


class Message:
    """Base of the typed messages; `AVRO` names the record's schema (`infaas/schemas/avro/<AVRO>.avsc`)."""

    AVRO: ClassVar[str]

    def to_record(self) -> dict[str, Any]:
        """The Avro record (field names as in the schema); nested values are passed as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_record(cls: type[M], record: dict[str, Any]) -> M:
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    def encode(self, codec: Codec) -> bytes:
        return codec.encode(self.AVRO, self.to_record())

    @classmethod
    def decode(cls: type[M], codec: Codec, data: bytes) -> M:
        return cls.from_record(codec.decode_as(cls.AVRO, data))


@dataclass(frozen=True, slots=True)
class Result(Message):
    """The answer to one query, on the app's reply topic."""

    AVRO: ClassVar[str] = "Result"
    query_id: str
    app_id: str
    status: str  # OK, BAD_INPUT, UNKNOWN_MODEL, NO_FEASIBLE_VARIANT, DEADLINE_EXCEEDED, INTERNAL_ERROR, ...
    error: str | None
    outputs: list[dict[str, Any]]  # Tensor records
    model: str | None
    variant: str | None
    hardware: str | None
    accuracy: float | None
    latency_ms: float
    queue_ms: float
    compute_ms: float
    best_accuracy_within_slo: float | None
    fastest_latency_ms: float | None
    completed_at: int


@dataclass(frozen=True, slots=True)
class WorkerCommand(Message):
    """An order to workers on `infaas.control`: load or unload a variant, change its replicas, stop."""

    AVRO: ClassVar[str] = "WorkerCommand"
    command_id: str
    at: int
    action: str
    worker_id: str | None
    hardware: str | None
    variant_id: str | None
    replicas: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScalingEvent(Message):
    """A scaling action or trigger, with its reason, on `infaas.scaling` and in Cassandra."""

    AVRO: ClassVar[str] = "ScalingEvent"
    event_id: str
    at: int
    kind: str
    policy: str
    task: str | None
    variant_id: str | None
    target_variant_id: str | None
    worker_id: str | None
    hardware: str | None
    from_count: int
    to_count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Tensor(Message):
    """A tensor on the wire: dtype, shape, raw little-endian C-order bytes (see infaas.tensors)."""

    AVRO: ClassVar[str] = "Tensor"
    dtype: str
    shape: list[int]
    data: bytes


@dataclass(frozen=True, slots=True)
class Query(Message):
    """What a client asks: a task (model-less), a model or a variant, with its requirements."""

    AVRO: ClassVar[str] = "Query"
    query_id: str
    app_id: str
    task: str | None
    model: str | None
    variant: str | None
    inputs: dict[str, Any]  # a Tensor record
    min_accuracy: float | None
    latency_ms: float | None
    max_cost: float | None
    reply_topic: str | None
    sent_at: int


@dataclass(frozen=True, slots=True)
class RoutedQuery(Message):
    """A query stamped by the dispatcher with its variant and deadline (the hot path wraps the query's bytes)."""

    AVRO: ClassVar[str] = "RoutedQuery"
    query: dict[str, Any]  # a Query record
    variant_id: str
    deadline_at: int | None
    dispatched_at: int
    estimated_ms: float
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerReport(Message):
    """A worker's heartbeat with its per-variant metrics (`variants`: VariantMetrics records)."""

    AVRO: ClassVar[str] = "WorkerReport"
    worker_id: str
    hardware: str
    host: str
    pid: int
    reported_at: int
    interval_ms: int
    cpu_util: float
    gpu_util: float | None
    memory_mb: float
    memory_budget_mb: float
    variants: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LoadWindow(Message):
    """Load over a tumbling window, per variant or per worker (the monitor's, on `infaas.load`)."""

    AVRO: ClassVar[str] = "LoadWindow"
    scope: str  # VARIANT or WORKER
    key: str
    window_s: int
    window_start: int
    served: int
    errors: int
    deadline_missed: int
    qps: float
    avg_latency_ms: float
    p99_ms: float
    max_queue_len: int
    avg_util: float


@dataclass(frozen=True, slots=True)
class VariantState(Message):
    """A variant's state (INFaaS's inactive/active/overloaded/interfered) on the compacted `infaas.state`."""

    AVRO: ClassVar[str] = "VariantState"
    variant_id: str
    task: str
    state: str
    replicas: int
    workers: list[str]
    qps: float
    avg_latency_ms: float
    queue_len: int
    avg_rows: float
    demand_accuracy: float
    demand_slo_ms: float
    updated_at: int


@dataclass(frozen=True, slots=True)
class DeadLetter(Message):
    """Bytes a service could not decode, with where they came from and why."""

    AVRO: ClassVar[str] = "DeadLetter"
    source_topic: str
    partition: int
    offset: int
    reason: str
    service: str
    payload: bytes
    at: int

    @classmethod
    def about(cls, source: tuple[str, int, int], reason: str, service: str, payload: bytes, at_ms: int) -> DeadLetter:
        """The dead letter for the bytes at `source` (topic, partition, offset): reason and payload cut to
        sizes that always fit a Kafka message."""
        return cls(source[0], source[1], source[2], reason[:MAX_REASON], service, bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]),
                   at_ms)


@dataclass(frozen=True, slots=True)
class AnalyticsWindow(Message):
    """SLO attainment, throughput and cost over a window (examples/analytics)."""

    AVRO: ClassVar[str] = "AnalyticsWindow"
    scope: str  # APP or VARIANT
    key: str
    window_s: int
    window_start: int
    answered: int
    ok: int
    slo_attainment: float
    throughput_qps: float
    avg_latency_ms: float
    cost_usd: float


MESSAGES: tuple[type[Message], ...] = (Result, WorkerCommand, ScalingEvent, Tensor, Query, RoutedQuery, WorkerReport,
                                       LoadWindow, VariantState, DeadLetter, AnalyticsWindow)
