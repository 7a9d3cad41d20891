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
