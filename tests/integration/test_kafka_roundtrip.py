"""Query and Result messages through the real broker with confluent-kafka."""

import io
import json
import time
import uuid

import avro.io
import avro.schema
import pytest

from infaas import bus
from infaas.schemas.codec import Codec, DecodeError
from tests.unit.test_codec import sample_query, sample_result

CODEC = Codec()


def _consume(settings, topic, count, timeout=30.0):
    consumer = bus.consumer(settings, f"test-{uuid.uuid4().hex[:6]}", **{"session.timeout.ms": 3000})
    consumer.subscribe([topic])
    messages = []
    try:
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                messages.append(msg)
    finally:
        consumer.close()
    return messages


def test_query_and_result_round_trip_through_kafka(settings):
    topic = settings.topic(f"roundtrip-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {topic: bus.TopicSpec(1)})
    producer = bus.producer(settings)
    query, result = sample_query(), sample_result()
    producer.produce(topic, key=b"q-1", value=CODEC.encode("Query", query))
    producer.produce(topic, key=b"q-1", value=CODEC.encode("Result", result))
    producer.produce(topic, key=b"junk", value=b"\x00garbage bytes")
    assert producer.flush(10) == 0
    messages = _consume(settings, topic, 3)
    assert len(messages) == 3
    assert CODEC.decode(messages[0].value()) == ("Query", query)
    assert CODEC.decode(messages[1].value()) == ("Result", result)
    # interoperability: the body decodes with the reference avro package too
    schema = avro.schema.parse(json.dumps(CODEC.schema("Result").resolved))
    decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(messages[1].value()[10:])))
    assert decoded["status"] == "OK" and decoded["variant"] == result["variant"]
    with pytest.raises(DecodeError, match="single-object"):
        CODEC.decode(messages[2].value())


def test_core_topics_exist(settings):
    topics = bus.existing_topics(settings)
    for name in bus.core_topics(settings):
        assert name in topics
    state = bus.admin(settings).list_topics(settings.topic("queries")).topics[settings.topic("queries")]
    assert len(state.partitions) == settings.query_partitions


def test_uncommitted_queries_counts_what_the_variant_group_has_not_committed(settings):
    from confluent_kafka import TopicPartition

    from infaas.bus import uncommitted_queries
    variant_id = f"probe-{uuid.uuid4().hex[:6]}:ort-fp32:cpu-1t:b1"
    topic = settings.variant_topic(variant_id)
    bus.ensure_topics(settings, {topic: bus.TopicSpec(2)})
    assert uncommitted_queries(settings, variant_id) == 0
    producer = bus.producer(settings)
    for i in range(5):
        producer.produce(topic, key=str(i).encode(), value=b"q", partition=i % 2)
    producer.flush(10)
    assert uncommitted_queries(settings, variant_id) == 5
    group = bus.consumer(settings, topic)  # the variant's group commits partition 0 fully
    try:
        group.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    finally:
        group.close()
    assert uncommitted_queries(settings, variant_id) == 2


def test_consume_ready_returns_a_lone_message_without_waiting_out_the_timeout(settings):
    """`Consumer.consume(n, timeout)` waits until n messages came or the timeout passed; a worker's
    control loop read its LOAD commands that way and each waited the whole 200 ms."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    topic = settings.topic(f"ready-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {topic: bus.TopicSpec(1)})
    producer = bus.producer(settings)
    producer.produce(topic, value=b"one", key=b"k")
    producer.produce(topic, value=b"two", key=b"k")
    assert producer.flush(30) == 0
    consumer = bus.consumer(settings, f"test-{uuid.uuid4().hex[:6]}")
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        consumer.poll(0)  # the first fetch is under way before timing
        started = time.monotonic()
        messages = []
        while len(messages) < 2 and time.monotonic() - started < 30:
            messages += [m for m in bus.consume_ready(consumer, 100, 10.0) if not m.error()]
        waited = time.monotonic() - started
    finally:
        consumer.close()
    assert [m.value() for m in messages] == [b"one", b"two"]
    assert waited < 5.0  # half of one timeout: never waited for 100 messages that do not come
