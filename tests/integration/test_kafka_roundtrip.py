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


def test_a_skipped_range_is_read_back_and_the_committed_offset_found_without_joining(settings):
    """What the dispatcher and the monitor use when Faust hands them a partition with offsets missing."""
    from confluent_kafka import TopicPartition
    topic = settings.topic(f"range-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {topic: bus.TopicSpec(1)})
    producer = bus.producer(settings)
    for i in range(8):
        producer.produce(topic, value=f"m{i}".encode(), partition=0)
    producer.flush(10)
    assert [m.value() for m in bus.read_range(settings, topic, 0, 3, 6)] == [b"m3", b"m4", b"m5"]
    assert bus.read_range(settings, topic, 0, 8, 9, timeout_s=1.0) == []  # not (yet) there: none, in time
    group = f"{topic}.group"
    assert bus.committed_offsets(settings, group, topic, [0]) == {0: None}
    assert bus.resume_offsets(settings, group, topic, [0]) == {0: 0}  # nothing committed: the log's start
    committer = bus.consumer(settings, group)
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        committer.close()
    assert bus.committed_offsets(settings, group, topic, [0]) == {0: 5}
    assert bus.resume_offsets(settings, group, topic, [0]) == {0: 5}


def test_the_skipped_head_of_a_new_groups_partition_is_read_back(settings):
    """Faust once handed a new dispatcher group offset 1 first and committed past 0: with nothing
    committed, the group resumes at the log's start, so 0 counts as skipped and is read back."""
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from infaas.streams.faust_support import SkippedOffsets
    topic = settings.topic(f"head-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {topic: bus.TopicSpec(2)})
    producer = bus.producer(settings)
    for i in range(4):
        producer.produce(topic, value=f"m{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    # Faust's side as SkippedOffsets sees it: the group's id, its assignment, the assignment signal.
    app = SimpleNamespace(conf=SimpleNamespace(id=f"{topic}.group"),
                          consumer=SimpleNamespace(assignment=lambda: {TP(topic, 0), TP(topic, 1)}),
                          on_partitions_assigned=SimpleNamespace(connect=lambda receiver: receiver))
    skipped = SkippedOffsets(app, settings)

    def handed(partition: int, offset: int) -> list[bytes]:
        message = SimpleNamespace(topic=topic, partition=partition, offset=offset)
        return [m.value() for m in asyncio.run(skipped.read_back(message))]

    assert handed(0, 2) == [b"m0", b"m1"]
    assert handed(0, 3) == []  # the next one: nothing missing
    assert handed(1, 0) == []  # the other partition starts at its log's start too


def _until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_dispatcher_acknowledges_its_batches_in_the_order_it_sent_them(settings):
    """A batch delivered before an earlier one waits for it: Faust would commit past the earlier
    one's query while it is still in flight (at its committed offset), and a crash would lose it."""
    from types import SimpleNamespace

    from infaas.streams.dispatcher import DeliveryTracker, Outgoing
    later, ready = settings.topic(f"later-{uuid.uuid4().hex[:6]}"), settings.topic(f"ready-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {ready: bus.TopicSpec(1)})
    acknowledged: list[str] = []
    on_loop = SimpleNamespace(call_soon_threadsafe=lambda callback, *args: callback(*args))  # no event loop needed
    tracker = DeliveryTracker(bus.producer(settings), on_loop, acknowledged.extend, _dead_letter(settings))
    try:
        tracker.send([Outgoing(later, b"k", b"first")], ["first"])  # its topic does not exist yet: undelivered
        tracker.send([Outgoing(ready, b"k", b"second")], ["second"])
        tracker.send([], ["third"])  # nothing to deliver
        assert _until(lambda: tracker._batches[1][0] == 0), "the second batch was never delivered"
        assert acknowledged == [] and tracker._done == []  # delivered, but held behind the first
        bus.ensure_topics(settings, {later: bus.TopicSpec(1)})
        assert _until(lambda: len(acknowledged) == 3), acknowledged
        assert acknowledged == ["first", "second", "third"]
    finally:
        tracker.close()


def _dead_letter(settings):
    from infaas.schemas.messages import DeadLetter
    from infaas.streams.dispatcher import Outgoing

    def letter(payload: bytes, source, reason: str, key: bytes | None) -> Outgoing:
        value = DeadLetter.about(source, reason, "dispatcher", payload, int(time.time() * 1000)).encode(CODEC)
        return Outgoing(settings.topic("deadletter"), key, value)
    return letter


def test_a_routed_query_whose_topic_is_gone_is_dead_lettered_and_the_dispatcher_goes_on(settings):
    """A variant's topic deleted (its model deleted) while a query routed to it was in flight: the
    producer refused it again in a delivery report, which stopped the thread that serves them."""
    from types import SimpleNamespace

    from confluent_kafka import TopicPartition

    from infaas.store import now_ms
    from infaas.streams.dispatcher import DeliveryTracker, Outgoing
    from infaas.tracing import trace_query
    gone = settings.topic(f"gone-{uuid.uuid4().hex[:6]}")
    letters = settings.topic("deadletter")
    probe = bus.consumer(settings, f"{gone}.probe")
    try:
        first = probe.get_watermark_offsets(TopicPartition(letters, 0), timeout=10)[1]  # the next letter's offset
    finally:
        probe.close()
    acknowledged: list[str] = []
    on_loop = SimpleNamespace(call_soon_threadsafe=lambda callback, *args: callback(*args))
    # A topic missing from the metadata for 0.5 s is taken as gone (30 s by default), as a deleted one is.
    producer = bus.producer(settings, **{"topic.metadata.propagation.max.ms": 500})
    tracker = DeliveryTracker(producer, on_loop, acknowledged.extend, _dead_letter(settings))
    try:
        first_id = uuid.uuid4().hex
        tracker.send([Outgoing(gone, first_id.encode(), b"routed query")], ["first"])
        assert _until(lambda: acknowledged == ["first"]), "the batch was never acknowledged"
        tracker.send([Outgoing(gone, b"q2", b"another")], ["second"])  # now refused at once: dead-lettered too
        assert _until(lambda: acknowledged == ["first", "second"]), acknowledged
    finally:
        tracker.close()
    found = [CODEC.decode_as("DeadLetter", m.value()) for m in bus.read_range(settings, letters, 0, first, first + 2)]
    ours = [d for d in found if d["source_topic"] == gone]
    assert [d["payload"] for d in ours] == [b"routed query", b"another"]
    assert all(f"cannot produce to {gone}" in d["reason"] for d in ours)
    traced = trace_query(settings, first_id, since_ms=now_ms() - 60_000)  # found by its key, with the reason
    assert traced.verdict().startswith(f"DEAD-LETTERED: cannot produce to {gone}"), traced.lines()


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



def _first_message_after_assignment(settings, topic, group, subscribe) -> tuple[float, set[tuple[int, bytes]]]:
    """Subscribe with `subscribe(consumer, topics)`: ms from the assignment to the first message, and the
    (partition, value) of every message that came within 2 s of it; the consumer commits what it read."""
    consumer = bus.consumer(settings, group, **{"session.timeout.ms": 3000})
    subscribe(consumer, [topic])
    assigned_at = first_at = None
    messages = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (first_at is None or time.monotonic() < first_at + 2):
            message = consumer.poll(0.002)
            assigned_at = assigned_at or (time.monotonic() if consumer.assignment() else None)
            if message is not None and not message.error():
                first_at = first_at or time.monotonic()
                messages.add((message.partition(), message.value()))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert assigned_at is not None and first_at is not None, "no assignment or no message within 30 s"
    return (first_at - assigned_at) * 1000, messages


def test_a_new_group_starts_at_the_first_message_without_librdkafkas_back_off(settings):
    """A new variant's first replica is a new consumer group: librdkafka, finding no committed offset, waits a
    fixed 100 ms before it looks up the earliest one. `bus.subscribe_from_start` names it on assignment."""
    topic = settings.topic(f"start-{uuid.uuid4().hex[:6]}")
    bus.ensure_topics(settings, {topic: bus.TopicSpec(2)})
    producer = bus.producer(settings)
    for partition in (0, 1):
        producer.produce(topic, value=f"m{partition}".encode(), partition=partition)
    assert producer.flush(30) == 0
    sent = {(0, b"m0"), (1, b"m1")}
    plain_ms, plain = _first_message_after_assignment(settings, topic, f"test-{uuid.uuid4().hex[:6]}",
                                                      lambda consumer, topics: consumer.subscribe(topics))
    group = f"test-{uuid.uuid4().hex[:6]}"
    fast_ms, fast = _first_message_after_assignment(settings, topic, group, bus.subscribe_from_start)
    assert plain == fast == sent
    assert fast_ms < plain_ms - 50, (fast_ms, plain_ms)  # the back-off is 100 ms; both ran on this machine now
    # A group that committed resumes where it stopped, not at the start of the log.
    producer.produce(topic, value=b"later", partition=0)
    assert producer.flush(30) == 0
    _, resumed = _first_message_after_assignment(settings, topic, group, bus.subscribe_from_start)
    assert resumed == {(0, b"later")}
