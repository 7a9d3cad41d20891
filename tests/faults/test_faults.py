"""Fault injection on real processes: under a steady load, each fault in turn, then an accounting
that every query sent got exactly one Result at the client (OK or an explicit error status).

The numbers of each run (queries sent, results, duplicates dropped by the client, latency during
recovery) are printed and collected in `bench-results/faults.json`.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from infaas import launcher
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import settings_env
from tests.faults.steady import run_fault, save_report

TASK = "digits-classification"


@pytest.fixture(scope="module")
def variant(zoo):
    candidates = [v for v in zoo[1].values() if v.optimizer == "ort-fp32" and v.threads == 1 and v.batch_size == 8]
    return min(candidates, key=lambda v: v.cost_per_1k)


@pytest.fixture(scope="module")
def pipeline(settings, variant):
    options = ServeOptions(workers=2, preload=[variant.variant_id], scaler=True,
                           scaler_args=["--min-workers", "2", "--max-workers", "2", "--unload-idle-s", "600"])
    running = Pipeline(settings, options, env=settings_env(settings))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def report():
    results: dict[str, dict] = {}
    yield results
    save_report(results)


def kill_worker_and_wait_for_replacement(pipeline: Pipeline, timeout_s: float = 120.0) -> float:
    """SIGKILL one worker (they belong to the scaler's backend); the seconds until the scaler
    started its replacement."""
    before = pipeline.worker_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        now = pipeline.worker_pids()
        if victim not in now and set(now) - set(before):
            assert len(now) == len(before), f"one crash, one replacement: {before} -> {now}"
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"no replacement for worker {before[victim]} within {timeout_s:.0f} s")


def test_worker_killed_mid_batch(settings, pipeline, variant, report):
    accounting = run_fault(settings, variant.variant_id, "worker SIGKILL (one of two)",
                           lambda: kill_worker_and_wait_for_replacement(pipeline), report)
    assert accounting["statuses"].get("OK", 0) > 0


def test_dispatcher_killed_and_restarted(settings, pipeline, variant, report):
    run_fault(settings, variant.variant_id, "dispatcher SIGKILL + restart",
              lambda: pipeline.restart("dispatcher"), report)


def test_monitor_and_scaler_killed_and_restarted(settings, pipeline, variant, report):
    def both() -> float:
        return pipeline.restart("monitor") + pipeline.restart("scaler")
    run_fault(settings, variant.variant_id, "monitor + scaler SIGKILL + restart", both, report)


def test_cassandra_stopped_for_30_s(settings, pipeline, variant, report):
    def outage() -> float:
        launcher.down(settings, services=("cassandra",))
        time.sleep(30)
        started = time.monotonic()
        launcher.up(settings, say=lambda m: None, services=("cassandra",))
        return time.monotonic() - started
    accounting = run_fault(settings, variant.variant_id, "Cassandra down 30 s", outage, report)
    assert accounting["statuses"].get("OK", 0) >= 0.9 * accounting["sent"]  # serving went on


def test_kafka_stopped_for_10_s(settings, pipeline, variant, report):
    def outage() -> float:
        launcher.down(settings, services=("kafka",))
        time.sleep(10)
        started = time.monotonic()
        launcher.up(settings, say=lambda m: None, services=("kafka",))
        return time.monotonic() - started
    run_fault(settings, variant.variant_id, "Kafka down 10 s", outage, report)
    pipeline.check()  # every service survived the broker's absence
