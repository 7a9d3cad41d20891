"""Typed messages: one frozen dataclass per Avro record that the services build, with `to_record` /
`from_record` at the codec (as confluent-kafka's serializers take `to_dict` / `from_dict`).

A message is built in one place with named, typed fields, and the codec checks it against its
schema when it is encoded. `tests/unit/test_messages.py` fails when a dataclass and its `.avsc` drift
apart. The hot path may still pass raw bytes (the dispatcher wraps a query's original bytes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .codec import Codec

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


MESSAGES: tuple[type[Message], ...] = (Result, WorkerCommand, ScalingEvent)
