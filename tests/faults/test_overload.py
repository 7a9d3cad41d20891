"""Overload: at 3x what one replica serves, the system sheds load explicitly and quickly
(DEADLINE_EXCEEDED at the worker, NO_FEASIBLE_VARIANT at the dispatcher once the queue is too long
for the SLO), memory stays bounded, and the served throughput does not collapse."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from infaas.client import InfaasClient
from infaas.registration import heavy
from infaas.registration.register import register_model
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import settings_env

SLO_MS = 200.0
REPORT = Path("bench-results") / "overload.json"


@pytest.fixture(scope="module")
def heavy_variant(settings, tmp_path_factory):
    model, validation = heavy.build(tmp_path_factory.mktemp("heavy"), layers=12, width=2048)
    narrow = settings.replace(variant_batch_sizes=(1,), variant_optimizers=("ort-fp32",), variant_threads=(1,))
    return register_model(narrow, "demo", "heavy-task", "deep-mlp", model, validation, public=True, quick=True,
                          name="heavy-mlp").variants[0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def offer(client: InfaasClient, x: np.ndarray, rate: float, seconds: float) -> list:
    """Open-loop load at `rate` queries/s; returns (sent at, result) for every query."""
    sent, began = [], time.monotonic()
    while time.monotonic() - began < seconds:
        sent.append((time.time(), client.submit(x, task="heavy-task", latency_ms=SLO_MS)))
        time.sleep(max(began + len(sent) / rate - time.monotonic(), 0))
    client.flush()
    return [(at, future.result(180)) for at, future in sent]


def served_rate(results: list) -> float:
    ok = [r for _, r in results if r.ok]
    return len(ok) / max(max(r.received_at for _, r in results) - results[0][0], 1e-9)


def test_three_times_capacity_is_shed_explicitly(settings, heavy_variant):
    capacity = 1000.0 / heavy_variant.latency_at(1)  # the profile's, measured alone on the machine
    options = ServeOptions(workers=1, preload=[heavy_variant.variant_id], scaler=False)
    x = np.zeros((1, heavy.INPUT), np.float32)
    with Pipeline(settings, options, env=settings_env(settings)) as running, \
            InfaasClient(settings, app_id="demo", timeout_s=180) as client:
        # What this machine serves at 1x, with the client, broker and services sharing its cores,
        # is the baseline "does not collapse" is measured against.
        at_capacity = served_rate(offer(client, x, capacity, 8.0))
        time.sleep(3.0)
        results = offer(client, x, 3 * capacity, 10.0)
        rss = {name: peak_rss_mb(service.pid) for name, service in running.services.items()}
    statuses: dict[str, int] = {}
    for _, r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    shed = [(r.received_at - at) * 1000 for at, r in results if r.status in ("DEADLINE_EXCEEDED",
                                                                           "NO_FEASIBLE_VARIANT")]
    served = served_rate(results)
    report = {"profiled_capacity_qps": capacity, "served_at_1x_qps": at_capacity,
              "offered_qps": len(results) / 10.0, "sent": len(results), "statuses": statuses,
              "served_at_3x_qps": served, "served_3x_vs_1x": served / at_capacity,
              "shed_latency_p50_ms": float(np.percentile(shed, 50)) if shed else None,
              "shed_latency_p99_ms": float(np.percentile(shed, 99)) if shed else None, "peak_rss_mb": rss}
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=1))
    print(f"\noverload: {json.dumps(report)}")
    assert sum(statuses.values()) == len(results)
    assert set(statuses) <= {"OK", "DEADLINE_EXCEEDED", "NO_FEASIBLE_VARIANT"}, statuses
    assert statuses.get("DEADLINE_EXCEEDED", 0) + statuses.get("NO_FEASIBLE_VARIANT", 0) > len(results) / 3
    assert report["shed_latency_p99_ms"] < 10 * SLO_MS  # shed quickly, not after an unbounded queue
    # Collapse would be serving almost nothing, or idling half the time as when the dispatcher went by
    # the once-a-second report alone (3x/1x was 0.46-0.64). With its own queue estimate it measured
    # 0.63-0.98 over five runs; the rest goes to the client's and the dispatcher's extra work at 3x.
    assert served > 0.5 * at_capacity
    assert max(rss.values()) < 2048  # memory stayed bounded
