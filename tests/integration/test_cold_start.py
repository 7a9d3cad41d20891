"""A query that arrives before any worker is up: the dispatcher routes it to a cold variant with no
worker to ask, and loads the variant on the first worker that reports, so the query is answered
(it used to wait in the variant's topic forever)."""

from __future__ import annotations

import uuid

from infaas import bus
from infaas.client import InfaasClient
from infaas.scaler.processes import ServiceProcess
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import ZOO_TASK, settings_env


def test_a_query_sent_before_any_worker_is_answered_once_one_starts(settings, zoo):
    from infaas.loadgen import validation_inputs
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}-cold-{uuid.uuid4().hex[:6]}")
    bus.ensure_core_topics(own)
    x = validation_inputs(own, ZOO_TASK)[:1]
    with Pipeline(own, ServeOptions(workers=0, scaler=False), env=settings_env(own)), \
            InfaasClient(own, app_id="demo", timeout_s=120) as client:
        waiting = client.submit(x, task=ZOO_TASK, latency_ms=60_000)
        client.flush()
        assert not waiting.done()  # nothing can serve it yet
        worker = ServiceProcess("cold-worker", ["worker", "--worker-id", "cold-w1"], own.state_dir / "logs" / "cold",
                                settings_env(own)).start()
        try:
            worker.wait_ready(120)
            result = client.wait(waiting, timeout_s=120)
        finally:
            worker.stop()
    assert result.ok, result.error
    assert result.prediction.shape == (1,)


def test_a_query_left_in_an_unloaded_variants_topic_is_served(settings, zoo):
    """A query routed just before its variant was unloaded (retired, or its last replica removed)
    would wait in the variant's topic with nobody to serve it: the dispatcher that routed to the
    variant sees it unloaded with queries left, and loads it again."""
    import time

    from confluent_kafka import OFFSET_END, TopicPartition

    from infaas.loadgen import validation_inputs
    from infaas.schemas.codec import default_codec
    from infaas.store import Store
    from infaas.tensors import to_tensor
    from tests.integration.test_lifecycle import _wait_for
    _, variants = zoo
    variant = min((v for v in variants.values() if v.batch_size == 1), key=lambda v: (v.cost_per_1k, v.variant_id))
    own = settings.replace(topic_prefix=f"{settings.topic_prefix}-strand-{uuid.uuid4().hex[:6]}")
    bus.ensure_core_topics(own)
    x = validation_inputs(own, ZOO_TASK)[:1]
    codec = default_codec()
    with Pipeline(own, ServeOptions(workers=1, preload=[variant.variant_id], scaler=False),
                  env=settings_env(own)) as running, InfaasClient(own, app_id="demo", timeout_s=120) as client:
        assert client.query(x, variant=variant.variant_id).ok  # the dispatcher routed to it
        worker_id = next(name for name in running.services if "worker" in name)
        command = {"command_id": uuid.uuid4().hex, "at": int(time.time() * 1000), "action": "UNLOAD",
                   "worker_id": worker_id, "hardware": None, "variant_id": variant.variant_id, "replicas": 0,
                   "reason": "test: unloaded"}
        producer = bus.producer(own)
        producer.produce(own.topic("control"), key=worker_id.encode(), value=codec.encode("WorkerCommand", command))
        producer.flush(10)
        with Store(own) as store:
            _wait_for(lambda: not any(variant.variant_id in (w.get("variants") or {}) for w in store.workers()
                                      if w["worker_id"] == worker_id), 60, "the worker to unload the variant")
        # What a dispatcher would have routed a moment before the unload, written to the variant's topic.
        results = bus.consumer(own, f"{own.topic_prefix}.test-reader")
        topic = own.results_topic("demo")
        results.assign([TopicPartition(topic, p, OFFSET_END) for p in results.list_topics(topic).topics[topic].partitions])
        query = {"query_id": "stranded-1", "app_id": "demo", "task": None, "model": None, "variant": variant.variant_id,
                 "inputs": to_tensor(x), "min_accuracy": None, "latency_ms": None, "max_cost": None,
                 "reply_topic": None, "sent_at": int(time.time() * 1000)}
        routed = {"query": query, "variant_id": variant.variant_id, "deadline_at": None,
                  "dispatched_at": int(time.time() * 1000), "estimated_ms": 1.0, "reason": "test"}
        producer.produce(own.variant_topic(variant.variant_id), key=b"stranded-1",
                         value=codec.encode("RoutedQuery", routed))
        producer.flush(10)
        answers: list[dict] = []
        deadline = time.monotonic() + 120
        while not answers and time.monotonic() < deadline:
            answers = [codec.decode_as("Result", m.value()) for m in results.consume(10, 0.5) if not m.error()]
            answers = [a for a in answers if a["query_id"] == "stranded-1"]
        results.close()
    assert answers and answers[0]["status"] == "OK", answers
