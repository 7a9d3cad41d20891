"""Typed messages agree with their Avro schemas and round-trip through the codec."""

from __future__ import annotations

import dataclasses

import pytest

from infaas.schemas.codec import Codec
from infaas.schemas.messages import MESSAGES, DeadLetter, Result, ScalingEvent, WorkerCommand

CODEC = Codec()

SAMPLES = [
    Result("q-1", "demo", "OK", None, [{"dtype": "int64", "shape": [1], "data": b"\x03" + b"\x00" * 7}], "mlp",
           "mlp:ort-fp32:cpu-1t:b1", "cpu", 0.96875, 4.5, 1.0, 0.5, None, None, 1_795_000_000_200),
    WorkerCommand("c-1", 1_795_000_000_000, "LOAD", "w-1", "cpu", "mlp:ort-fp32:cpu-1t:b1", 1, "first query"),
    ScalingEvent("e-1", 1_795_000_000_000, "ADD_REPLICA", "infaas", "digits", "v", None, "w-1", "cpu", 1, 2,
                 "overloaded"),
]


@pytest.mark.parametrize("message_type", MESSAGES, ids=lambda t: t.AVRO)
def test_fields_are_the_schema_fields_in_order(message_type):
    schema_fields = [f["name"] for f in CODEC.schema(message_type.AVRO).resolved["fields"]]
    assert [f.name for f in dataclasses.fields(message_type)] == schema_fields


def test_every_schema_has_its_message():
    assert {m.AVRO for m in MESSAGES} == set(CODEC.current)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.AVRO)
def test_round_trip_through_the_codec(message):
    data = message.encode(CODEC)
    assert CODEC.decode(data)[0] == message.AVRO
    assert type(message).decode(CODEC, data) == message


def test_messages_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SAMPLES[1].replicas = 3


def test_a_dead_letter_always_fits_a_kafka_message():
    letter = DeadLetter.about(("t", 0, 7), "x" * 100_000, "dispatcher", b"\xff" * (4 << 20), 1)
    assert len(letter.reason) == 1000 and len(letter.encode(CODEC)) < 1 << 20
    assert (letter.source_topic, letter.partition, letter.offset) == ("t", 0, 7)
