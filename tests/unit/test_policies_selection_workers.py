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
