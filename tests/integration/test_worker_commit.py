"""A worker commits a batch's offsets only once Kafka acknowledged every result of it: a result the
broker refuses is not lost with its query committed; the query is served again until it is delivered.
Real Kafka, Cassandra and ONNX Runtime; the refusal is real too (the reply topic's message size limit)."""

from __future__ import annotations

import time

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from infaas import bus
from infaas.bus import uncommitted_queries
from infaas.consumers.worker import Worker
from infaas.schemas.codec import default_codec
from infaas.tensors import to_tensor
from tests.small_model import register_small_variant

CODEC = default_codec()


def wait_until(condition, timeout_s: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not met within {timeout_s:.0f} s"
        time.sleep(0.1)


def routed_query(variant_id: str, reply_topic: str) -> dict:
    query = {"query_id": "refused-once", "app_id": "demo", "task": None, "model": None, "variant": variant_id,
             "inputs": to_tensor(np.zeros((1, 64), np.float32)), "min_accuracy": None, "latency_ms": None,
             "max_cost": None, "reply_topic": reply_topic, "sent_at": int(time.time() * 1000)}
    return {"query": query, "variant_id": variant_id, "deadline_at": None, "dispatched_at": query["sent_at"],
            "estimated_ms": 1.0, "reason": "test"}


def results_on(settings, topic: str) -> list[dict]:
    consumer = bus.consumer(settings, f"{settings.topic_prefix}.probe")
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        return [CODEC.decode_as("Result", m.value()) for m in consumer.consume(10, 2.0) if not m.error()]
    finally:
        consumer.close()


def set_max_message_bytes(settings, topic: str, limit: int) -> None:
    entry = ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
    client = bus.admin(settings)  # kept alive until the request is answered
    for future in client.incremental_alter_configs(
            [ConfigResource("TOPIC", topic, incremental_configs=[entry])]).values():
        future.result(30)


def test_a_refused_result_is_not_committed_and_is_served_again(settings, tmp_path):
    variant = register_small_variant(settings, tmp_path, "commit-digits", "commit-logreg")
    reply = f"{settings.topic_prefix}.results.refusing"
    bus.ensure_topics(settings, {settings.variant_topic(variant.variant_id): bus.TopicSpec(1),
                                 reply: bus.TopicSpec(1, {"max.message.bytes": "100"})})  # any result is larger
    worker = Worker(settings, "cpu", "commit-test", offline_cpu_threshold=None).start([variant.variant_id])
    try:
        producer = bus.producer(settings)
        producer.produce(settings.variant_topic(variant.variant_id), key=b"refused-once",
                         value=CODEC.encode("RoutedQuery", routed_query(variant.variant_id, reply)))
        producer.flush(10)
        replica = worker.hosted[variant.variant_id].replicas[0]
        # served, refused, and served again (not committed and forgotten after the first refusal)
        wait_until(lambda: getattr(replica, "failed_deliveries", 0) >= 2 or
                   uncommitted_queries(settings, variant.variant_id) == 0, what="the query was served twice")
        assert uncommitted_queries(settings, variant.variant_id) == 1, "committed although its result was refused"
        assert results_on(settings, reply) == []
        set_max_message_bytes(settings, reply, 1_000_000)  # the broker accepts results again
        wait_until(lambda: uncommitted_queries(settings, variant.variant_id) == 0, what="committed once delivered")
        delivered = results_on(settings, reply)
        assert [r["query_id"] for r in delivered] == ["refused-once"] and delivered[0]["status"] == "OK"
    finally:
        worker.stop()
