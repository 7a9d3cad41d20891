"""Metrics and probes of the running services, scraped over HTTP, and `infaas status` listing them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infaas.client import InfaasClient
from infaas.serve import Pipeline, ServeOptions
from tests.conftest import ZOO_TASK, settings_env

SERVICES = {"dispatcher", "monitor", "scaler"}  # serve's own; the workers are the scaler's (named by it)


@pytest.fixture(scope="module")
def running(settings, zoo):
    _, variants = zoo
    cheapest = min(variants.values(), key=lambda v: (v.cost_per_1k, v.variant_id))
    pipeline = Pipeline(settings, ServeOptions(workers=1, preload=[cheapest.variant_id], scaler=True),
                        env=settings_env(settings))
    pipeline.start()
    yield pipeline, cheapest
    pipeline.stop()


def status(settings) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "infaas", "status", "--json"], env=settings_env(settings),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def wait_for(check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_status_lists_every_service_healthy_and_ready(settings, running):
    rows = {row["name"]: row for row in status(settings)}
    pipeline, _ = running
    expected = {name: pipeline.services[name].pid for name in SERVICES}
    expected.update({worker_id: pid for pid, worker_id in pipeline.worker_pids().items()})
    assert len(expected) > len(SERVICES) and set(expected) <= set(rows), rows
    for name, pid in expected.items():
        assert rows[name]["pid"] == pid
        assert (rows[name]["health"], rows[name]["ready"]) == ("ok", "ok"), rows[name]
        assert rows[name]["metrics_url"].endswith("/metrics")


def test_scraped_metrics_follow_the_traffic(settings, running, zoo):
    pipeline, cheapest = running
    urls = {row["name"]: row["metrics_url"] for row in status(settings)}
    [worker_id] = pipeline.worker_pids().values()  # serve started one worker
    import numpy as np
    x = np.zeros((1, 64), dtype=np.float32)
    with InfaasClient(settings, app_id="demo", timeout_s=60) as client:
        futures = [client.submit(x, variant=cheapest.variant_id) for _ in range(20)]
        bad = client.submit(x[:, :10], task=ZOO_TASK)
        client.flush()
        assert all(client.wait(f).ok for f in futures)
        assert client.wait(bad).status == "BAD_INPUT"
    dispatcher = scrape(urls["dispatcher"])
    assert value(dispatcher, "infaas_dispatcher_routed_total", variant=cheapest.variant_id) >= 20
    assert value(dispatcher, "infaas_dispatcher_shed_total", status="BAD_INPUT") >= 1
    served = wait_for(lambda: value(scrape(urls[worker_id]), "infaas_worker_queries_total",
                                    variant=cheapest.variant_id, outcome="served") >= 20)
    assert served
    worker = scrape(urls[worker_id])
    assert value(worker, "infaas_worker_latency_ms_count", variant=cheapest.variant_id) >= 20
    assert value(worker, "infaas_worker_latency_ms_bucket", variant=cheapest.variant_id, le="+Inf") >= 20
    assert ("infaas_worker_replicas", (("variant", cheapest.variant_id),)) in worker
    for name in ("monitor", "scaler"):
        assert ("infaas_cassandra_write_backlog", ()) in scrape(urls[name])


def test_advertisements_go_with_the_processes(settings, running):
    pipeline, _ = running
    pids = {service.pid for service in pipeline.services.values()}
    pipeline.stop()
    left = [row for row in status(settings) if row["pid"] in pids and row["health"] != "gone"]
    assert not left, left
