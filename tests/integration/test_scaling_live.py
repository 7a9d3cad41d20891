"""Autoscaling on the live pipeline: a load step up makes replicas appear within a bounded time,
a drop makes them go away, and every action is in `scaling_events` with its reason."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from infaas.client import InfaasClient, QueryTimeout
from infaas.registration import compute_bound
from infaas.registration.register import register_model
from infaas.serve import Pipeline, ServeOptions
from infaas.store import Store, now_ms
from infaas.tracing import trace_query
from tests.conftest import settings_env

TASK = "slow-task"


@pytest.fixture(scope="module")
def slow_variant(settings, tmp_path_factory):
    # Four times the default compute: the step (2.5x one replica) then costs the client and the
    # dispatcher little beside the model, whose own load is what the scaler has to answer.
    model, validation = compute_bound.build(tmp_path_factory.mktemp("slow"), width=2048)
    narrow = settings.replace(variant_batch_sizes=(1,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    report = register_model(narrow, "demo", TASK, "deep-mlp", model, validation, public=True, quick=True,
                            name="slow-mlp")
    assert len(report.variants) == 1
    return report.variants[0]


@pytest.fixture(scope="module")
def scaled_pipeline(settings, slow_variant):
    options = ServeOptions(workers=1, preload=[slow_variant.variant_id], scaler=True,
                           scaler_args=["--interval", "0.5", "--unload-idle-s", "20", "--max-workers", "1"])
    running = Pipeline(settings, options, env=settings_env(settings))
    running.start()
    yield running
    running.stop()


def _events(settings, since_ms: int, kinds: set[str]) -> list[dict]:
    with Store(settings) as store:
        return [e for e in store.scaling_events(since_ms=since_ms, limit=500) if e["kind"] in kinds]


def _wait_for(settings, since_ms: int, kinds: set[str], timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _events(settings, since_ms, kinds)
        if found:
            return found
        time.sleep(0.5)
    return []


def _answer(settings, client: InfaasClient, query_id: str, future, since_ms: int):
    """The query's result; one never answered fails the test with where it was lost (`infaas trace`)."""
    try:
        return client.wait(future)
    except QueryTimeout:
        pytest.fail("\n".join(trace_query(settings, query_id, since_ms).lines()))


def test_step_up_adds_replicas_and_step_down_removes_them(settings, slow_variant, scaled_pipeline):
    capacity = 1000.0 / slow_variant.latency_at(1)  # queries/s one replica serves, by its profile
    rate = 2.5 * capacity
    start = now_ms()
    x = np.random.default_rng(0).normal(size=(1, compute_bound.INPUT)).astype(np.float32)
    with InfaasClient(settings, app_id="demo", timeout_s=120) as client:
        futures, began = [], time.monotonic()
        while time.monotonic() - began < 8.0:  # the step: 2.5x one replica's capacity for 8 s
            query_id = uuid.uuid4().hex
            futures.append((query_id, client.submit(x, task=TASK, latency_ms=60_000, query_id=query_id)))
            time.sleep(1.0 / rate)
        client.flush()
        added = _wait_for(settings, start, {"ADD_REPLICA"}, timeout_s=20)
        results = [_answer(settings, client, query_id, future, start - 1000) for query_id, future in futures]
    assert added, "no replica was added under 2.5x load"
    first_add_s = (added[-1]["at"] - start) / 1000
    assert first_add_s < 15, f"first replica added only after {first_add_s:.1f} s"
    assert "demand" in added[-1]["reason"]
    # Every query was answered explicitly; on a machine this small the variant can also turn
    # INTERFERED (its execution slowed by the contention): it then gets only the queries it can answer
    # in time at the speed measured, and the others are shed (and the client, seeing them shed,
    # refuses some of the class itself: THROTTLED).
    statuses = {r.status for r in results}
    assert statuses <= {"OK", "NO_FEASIBLE_VARIANT", "DEADLINE_EXCEEDED", "THROTTLED"}, statuses
    counts = {s: sum(r.status == s for r in results) for s in statuses}
    assert sum(r.ok for r in results) > len(results) / 2, counts

    dropped = now_ms()
    removed = _wait_for(settings, dropped, {"REMOVE_REPLICA", "UNLOAD_VARIANT"}, timeout_s=30)
    assert removed, "replicas stayed after the load dropped"
    assert all(e["reason"] for e in removed)
