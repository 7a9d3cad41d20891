"""Selection step 4 with no worker of a variant's hardware: a fix, tested here (test_selection.py is the
selection's own suite)."""

from __future__ import annotations

from infaas.policies import Request, select
from infaas.policies.snapshot import Snapshot, WorkerLive
from tests.unit.test_policies_scaling import variant

FAST_GPU = variant("resnet:trt:gpu-a100:b1", hardware="gpu-a100", intercept=5.0, load_ms=500.0)
CPU = variant("resnet:ort:cpu-2t:b1", intercept=100.0, load_ms=1000.0)
CATALOG = {v.variant_id: v for v in (FAST_GPU, CPU)}


def test_an_inactive_variant_that_can_load_now_beats_one_that_needs_a_new_worker():
    request = Request("demo", task="vision", latency_ms=300.0)
    cpu_only = Snapshot(CATALOG, workers={"w1": WorkerLive("w1", "cpu")}, at_ms=1)
    decision = select(cpu_only, request)
    assert decision.variant_id == CPU.variant_id and decision.load_on == "w1"  # not 505 ms + a 20-30 s VM start
    with_gpu = Snapshot(CATALOG, workers={"w1": WorkerLive("w1", "cpu"), "g1": WorkerLive("g1", "gpu-a100")}, at_ms=1)
    assert select(with_gpu, request).variant_id == CPU.variant_id  # both load now: the cheaper, not the faster
    only_gpu_ready = Snapshot(CATALOG, workers={"g1": WorkerLive("g1", "gpu-a100")}, at_ms=1)
    assert select(only_gpu_ready, request).variant_id == FAST_GPU.variant_id  # the one that loads now
    nothing = Snapshot(CATALOG, at_ms=1)
    decision = select(nothing, request)
    assert decision.variant_id == CPU.variant_id and decision.load_on is None
    assert "has to start first" in decision.reason


SMALL_CPU = variant("small:ort:cpu-2t:b1", intercept=10.0, load_ms=100.0, task="text")


def test_a_cold_variant_loads_on_a_worker_with_unreserved_room_not_on_the_least_utilized():
    """A worker whose units its replicas reserve gets no cold variant, however idle it was last second:
    at the next burst every replica on it would slow the others (bursty: a worker hosting 10 variants ran
    8x slower for 30 s)."""
    request = Request("demo", task="vision", latency_ms=300.0)
    busy_later = WorkerLive("w1", "cpu", cpu_util=0.05, variants={SMALL_CPU.variant_id: 1})  # a whole 2-vCPU share
    empty = WorkerLive("w2", "cpu", cpu_util=0.2)
    catalog = {**CATALOG, SMALL_CPU.variant_id: SMALL_CPU}
    decision = select(Snapshot(catalog, workers={"w1": busy_later, "w2": empty}, at_ms=1), request)
    assert decision.variant_id == CPU.variant_id and decision.load_on == "w2"
    decision = select(Snapshot(catalog, workers={"w1": busy_later}, at_ms=1), request)
    assert decision.variant_id == CPU.variant_id and decision.load_on is None  # waits for a worker with room
    assert "has room" in decision.reason
