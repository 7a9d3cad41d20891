"""The soak benchmark's bookkeeping: finding the service processes and judging their memory."""

from __future__ import annotations

import os
import subprocess
import sys

from infaas.soak import descendants, service_name, steady_arrivals, verdict


def test_descendants_and_service_names_of_real_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "infaas", "worker",
                              "--worker-id", "cpu-worker-7"])
    try:
        assert child.pid in descendants(os.getpid())
        assert service_name(child.pid) == "cpu-worker-7"
    finally:
        child.kill()
        child.wait()
    assert service_name(os.getpid()) is None  # pytest is not an infaas service


def test_verdict_compares_the_end_with_the_sample_after_the_warmup():
    samples = [(10.0, {"dispatcher": 100.0, "w": 200.0}), (300.0, {"dispatcher": 120.0, "w": 210.0}),
               (1800.0, {"dispatcher": 131.0, "w": 215.0, "scaled": 90.0})]
    rows = verdict(samples, baseline_s=300.0)
    assert rows["dispatcher"]["ratio"] == 131.0 / 120.0 and rows["dispatcher"]["within"] is True
    assert rows["w"]["within"] is True
    assert rows["scaled"]["within"] is None  # no baseline: started later
    grown = verdict([(300.0, {"monitor": 100.0}), (1800.0, {"monitor": 111.0})], baseline_s=300.0)
    assert grown["monitor"]["within"] is False


def test_steady_arrivals_keep_their_rate():
    arrivals = steady_arrivals(600.0, 20.0, seed=1)
    assert abs(len(arrivals) / 600.0 - 20.0) < 1.0
    assert all(0 <= a.at_s < 600.0 for a in arrivals)
