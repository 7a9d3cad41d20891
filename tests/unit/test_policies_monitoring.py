"""Variant states from what the monitor saw (INFaaS's "Worker monitoring" thresholds)."""

from __future__ import annotations

import pytest

from infaas.policies import classify
from infaas.policies.capacity import replica_throughput, replicas_for, scale_delta, usable_batch
from infaas.policies.monitoring import track
from infaas.policies.snapshot import (
    ACTIVE,
    INACTIVE,
    INTERFERED,
    OVERLOADED,
    PolicyConfig,
    Snapshot,
    WorkerLive,
)
from tests.unit.test_policies_scaling import variant

CONFIG = PolicyConfig(slo_first=False)  # INFaaS's load-latency headroom (the SLO-first target: test_policies_slo_first.py)
CPU = variant("resnet:ort:cpu-2t:b1", intercept=100.0)  # 100 ms, 10 q/s per replica
GPU = variant("resnet:ort:gpu-t4:b1", hardware="gpu-t4", intercept=40.0)  # 40 ms, 25 q/s
FAST_GPU = variant("tiny:ort:gpu-t4:b1", hardware="gpu-t4", intercept=5.0)  # 5 ms: k = min(5, 15/5) = 3


def test_no_replica_is_inactive():
    assert classify(CPU, 50.0, 900.0, 100, 0, ACTIVE, CONFIG) == INACTIVE


def test_cpu_interference_needs_slow_answers_under_real_load():
    assert classify(CPU, 6.0, 260.0, 0, 1, ACTIVE, CONFIG) == INTERFERED  # > 2.5 x 100 ms at > 0.5 x 10 q/s
    assert classify(CPU, 6.0, 240.0, 0, 1, ACTIVE, CONFIG) == ACTIVE
    assert classify(CPU, 4.0, 400.0, 0, 1, ACTIVE, CONFIG) == ACTIVE  # too little load to tell


def test_interference_clears_below_1_5x_with_a_short_queue():
    assert classify(CPU, 6.0, 200.0, 0, 1, INTERFERED, CONFIG) == INTERFERED  # 2x: between the thresholds
    assert classify(CPU, 6.0, 140.0, 0, 1, INTERFERED, CONFIG) == ACTIVE
    assert classify(CPU, 6.0, 140.0, 50, 1, INTERFERED, CONFIG) == INTERFERED  # the queue is still long


def test_gpu_factors():
    assert classify(GPU, 10.0, 61.0, 0, 1, ACTIVE, CONFIG) == INTERFERED  # > 1.5 x 40 ms, > 0.3 x 25 q/s
    assert classify(GPU, 10.0, 59.0, 0, 1, ACTIVE, CONFIG) == ACTIVE
    assert classify(GPU, 10.0, 45.0, 0, 1, INTERFERED, CONFIG) == ACTIVE  # below 1.25 x
    assert classify(GPU, 10.0, 55.0, 0, 1, INTERFERED, CONFIG) == INTERFERED
    # Faster than 10 ms: k = min(5, 15 / 5 ms) = 3.
    assert classify(FAST_GPU, 100.0, 14.0, 0, 1, ACTIVE, CONFIG) == ACTIVE
    assert classify(FAST_GPU, 100.0, 16.0, 0, 1, ACTIVE, CONFIG) == INTERFERED


def test_a_long_queue_is_overloaded():
    # 0.8 x 2 replicas x 10 q/s = 16 queued queries.
    assert classify(CPU, 20.0, 100.0, 17, 2, ACTIVE, CONFIG) == OVERLOADED
    assert classify(CPU, 20.0, 100.0, 16, 2, ACTIVE, CONFIG) == ACTIVE


def test_worker_low_since_is_tracked():
    workers = {"w1": WorkerLive("w1", "cpu", cpu_util=0.2), "g1": WorkerLive("g1", "gpu-t4", gpu_util=0.2)}
    first = track(None, Snapshot({}, {}, workers, at_ms=1000), CONFIG)
    assert first.workers["w1"].low_since_ms == 1000  # CPU low at <= 30 %
    assert first.workers["g1"].low_since_ms == 0  # GPU low only at <= 8 %
    again = track(first, Snapshot({}, {}, workers, at_ms=3000), CONFIG)
    assert again.workers["w1"].low_since_ms == 1000
    busy = {"w1": WorkerLive("w1", "cpu", cpu_util=0.5)}
    assert track(again, Snapshot({}, {}, busy, at_ms=5000), CONFIG).workers["w1"].low_since_ms == 0


def test_capacity_arithmetic():
    assert replica_throughput(CPU) == pytest.approx(10.0)
    assert scale_delta(CPU, 20.0, 1, CONFIG) == pytest.approx(20 - 10 + 0.0002 * 10 * 1000)
    assert replicas_for(CPU, 20.0, CONFIG) == 3  # 20 / (10 x (1 - 0.2)) = 2.5
    b8 = variant("resnet:ort:gpu-t4:b8", hardware="gpu-t4", batch=8, slope=10.0, intercept=20.0)  # 100 ms at 8
    assert usable_batch(b8) == 8 and replica_throughput(b8) == pytest.approx(80.0)
    assert usable_batch(b8, slo_ms=120.0) == 4  # 2 x latency(4) = 120 ms
    assert replica_throughput(b8, slo_ms=120.0) == pytest.approx(4 * 1000 / 60)
    assert usable_batch(b8, slo_ms=50.0) == 0  # not even one query fits under load
