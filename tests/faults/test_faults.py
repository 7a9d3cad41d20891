"""Fault injection on real processes: under a steady load, each fault in turn, then an accounting
that every query sent got exactly one Result at the client (OK or an explicit error status).

The numbers of each run (queries sent, results, duplicates dropped by the client, latency during
recovery) are printed and collected in `bench-results/faults.json`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from infaas import launcher
from infaas.client import InfaasClient
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import settings_env

TASK = "digits-classification"
RATE_QPS = 40.0
REPORT = Path("bench-results") / "faults.json"


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
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=1))


class SteadyLoad:
    """Queries at a constant rate from a thread; every future kept for the accounting."""

    def __init__(self, client: InfaasClient, variant_id: str, rate_qps: float):
        self.client, self.variant_id, self.rate = client, variant_id, rate_qps
        self.sent: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.x = np.zeros((1, 64), np.float32)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sent.append((time.time(), self.client.submit(self.x, variant=self.variant_id)))
            next_at += 1.0 / self.rate
            time.sleep(max(next_at - time.monotonic(), 0))

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def account(self, fault_at: float, timeout_s: float = 90.0) -> dict:
        self.client.flush(30)
        deadline = time.monotonic() + timeout_s
        statuses: dict[str, int] = {}
        lost, before, during = 0, [], []
        for sent_at, future in self.sent:
            try:
                result = future.result(max(deadline - time.monotonic(), 0.01))
            except Exception:
                lost += 1
                continue
            statuses[result.status] = statuses.get(result.status, 0) + 1
            latency = (result.received_at - sent_at) * 1000
            (before if sent_at < fault_at else during).append(latency)
        return {"sent": len(self.sent), "results": sum(statuses.values()), "lost": lost, "statuses": statuses,
                "duplicates_dropped": self.client.duplicates_dropped,
                "p50_before_ms": float(np.percentile(before, 50)) if before else None,
                "max_during_recovery_ms": float(max(during)) if during else None,
                "extra_latency_ms": float(max(during) - np.percentile(before, 50)) if before and during else None}


def run_fault(settings, pipeline, variant, name: str, inject, report: dict, settle_s: float = 4.0) -> dict:
    with InfaasClient(settings, app_id="demo", timeout_s=120) as client:
        client.query(np.zeros((1, 64), np.float32), variant=variant.variant_id)  # everything is up
        with SteadyLoad(client, variant.variant_id, RATE_QPS) as load:
            time.sleep(3.0)
            fault_at = time.time()
            recovery = inject()
            time.sleep(settle_s)
        accounting = load.account(fault_at)
    accounting["recovery_s"] = recovery
    report[name] = accounting
    print(f"\n{name}: {json.dumps(accounting)}")
    assert accounting["lost"] == 0, accounting
    assert accounting["results"] == accounting["sent"], accounting
    return accounting


def test_worker_killed_mid_batch(settings, pipeline, variant, report):
    accounting = run_fault(settings, pipeline, variant, "worker SIGKILL",
                           lambda: pipeline.restart("cpu-worker-1"), report)
    assert accounting["statuses"].get("OK", 0) > 0


def test_dispatcher_killed_and_restarted(settings, pipeline, variant, report):
    run_fault(settings, pipeline, variant, "dispatcher SIGKILL + restart",
              lambda: pipeline.restart("dispatcher"), report)


def test_monitor_and_scaler_killed_and_restarted(settings, pipeline, variant, report):
    def both() -> float:
        return pipeline.restart("monitor") + pipeline.restart("scaler")
    run_fault(settings, pipeline, variant, "monitor + scaler SIGKILL + restart", both, report)


def test_cassandra_stopped_for_30_s(settings, pipeline, variant, report):
    def outage() -> float:
        launcher.down(settings, services=("cassandra",))
        time.sleep(30)
        started = time.monotonic()
        launcher.up(settings, say=lambda m: None, services=("cassandra",))
        return time.monotonic() - started
    accounting = run_fault(settings, pipeline, variant, "Cassandra down 30 s", outage, report)
    assert accounting["statuses"].get("OK", 0) >= 0.9 * accounting["sent"]  # serving went on


def test_kafka_stopped_for_10_s(settings, pipeline, variant, report):
    def outage() -> float:
        launcher.down(settings, services=("kafka",))
        time.sleep(10)
        started = time.monotonic()
        launcher.up(settings, say=lambda m: None, services=("kafka",))
        return time.monotonic() - started
    run_fault(settings, pipeline, variant, "Kafka down 10 s", outage, report, settle_s=10.0)
    pipeline.check()  # every service survived the broker's absence
