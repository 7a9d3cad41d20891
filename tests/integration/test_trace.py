"""`infaas trace`: a query placed on its way through the real topics and consumer groups, without a
pipeline: its routed message written here, and committed here as a replica would."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from confluent_kafka import TopicPartition

from infaas import bus
from infaas.store import now_ms
from infaas.tracing import trace_query
from tests.conftest import settings_env


def _route(settings, variant_topic: str, query_id: str) -> int:
    """Write a message keyed by the query id to a variant topic, as the dispatcher routes one; its offset."""
    bus.ensure_topics(settings, {variant_topic: bus.TopicSpec(1)})
    offsets = []
    producer = bus.producer(settings)
    producer.produce(variant_topic, key=query_id.encode(), value=b"routed",
                     on_delivery=lambda err, msg: offsets.append(msg.offset()))
    assert producer.flush(10) == 0 and offsets
    return offsets[0]


def _commit_past(settings, variant_topic: str, offset: int) -> None:
    """Commit past the message in the replicas' group (the variant topic's name), as a replica does once
    the batch's results were acknowledged."""
    replica = bus.consumer(settings, variant_topic)
    try:
        replica.commit(offsets=[TopicPartition(variant_topic, 0, offset + 1)], asynchronous=False)
    finally:
        replica.close()


def test_a_routed_query_waits_until_its_replicas_commit_it_and_then_is_lost(settings):
    since = now_ms() - 1000
    variant_topic = settings.variant_topic(f"trace-{uuid.uuid4().hex[:6]}:ort-fp32:cpu-1t:b1")
    query_id = uuid.uuid4().hex
    offset = _route(settings, variant_topic, query_id)
    waiting = trace_query(settings, query_id, since_ms=since)
    assert [(h.topic, h.offset) for h in waiting.routed] == [(variant_topic, offset)]
    assert not waiting.answered and waiting.verdict().startswith("waiting: routed to " + variant_topic)

    _commit_past(settings, variant_topic, offset)
    lost = trace_query(settings, query_id, since_ms=since)
    assert lost.routed[0].committed == offset + 1
    assert lost.verdict().startswith("LOST at a worker"), lost.lines()


def test_an_unknown_query_is_not_found_and_the_cli_says_so(settings):
    query_id = uuid.uuid4().hex
    assert trace_query(settings, query_id, since_ms=now_ms() - 60_000).verdict().startswith("not found")
    out = subprocess.run([sys.executable, "-m", "infaas", "trace", query_id, "--since-min", "1", "--json"],
                         env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr  # unanswered
    found = json.loads(out.stdout)
    assert found["query_id"] == query_id and found["verdict"].startswith("not found")
    bad = subprocess.run([sys.executable, "-m", "infaas", "trace", query_id, "--since-min", "0"],
                         env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--since-min must be positive" in bad.stderr and "Traceback" not in bad.stderr
