"""Simulator fidelity and the report's bounds: billing minimum, cost bounds, the goal table."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from infaas.policies.snapshot import PolicyConfig
from infaas.sim.bounds import best_packed_cost, cost_bounds
from infaas.sim.engine import SimOptions, SimWorker
from infaas.sim.report import _costs, goal_section
from infaas.sim.traces import build_workload
from tests.unit.test_policies_scaling import CPU_B1, SMALL_CPU
from tests.unit.test_sim_engine import CPU_HOURLY, trace


def test_a_worker_is_billed_at_least_the_minimum():
    short = SimWorker("cpu-1", "cpu", 2, 8192.0, CPU_HOURLY, started_at=0.0, ready_at=20_000.0)
    short.removed_at = 10_000.0  # removed after 10 s: billed 60 s
    long = SimWorker("cpu-2", "cpu", 2, 8192.0, CPU_HOURLY, started_at=0.0, ready_at=20_000.0)
    long.removed_at = 90_000.0
    sim = SimpleNamespace(all_workers=[short, long], options=SimOptions())
    assert _costs(sim, 0.0, 600_000.0)["cpu"] == pytest.approx(CPU_HOURLY * (60 + 90) / 3600)
    sim.options = SimOptions(billing_minimum_s=0.0)
    assert _costs(sim, 0.0, 600_000.0)["cpu"] == pytest.approx(CPU_HOURLY * (10 + 90) / 3600)


def test_cost_bounds_by_hand():
    # 20 queries in the first second, then 5 a second for 19 s; CPU_B1 carries 10 rows/s on a whole worker.
    arrivals = np.concatenate([np.linspace(0, 999, 20), np.concatenate([np.linspace(s * 1000, s * 1000 + 999, 5)
                                                                         for s in range(1, 20)])])
    workload = build_workload([trace(arrivals, slo=1000.0)], [CPU_B1], np.random.default_rng(0))
    bounds = cost_bounds(workload, [CPU_B1], {"vision": CPU_B1.variant_id}, PolicyConfig(), warmup_ms=0.0)
    per_row = CPU_HOURLY / 3600 / 10
    assert bounds["cheapest_fluid"] == pytest.approx(115 * per_row)
    assert bounds["static_fluid"] == pytest.approx(115 * per_row)
    # Whole workers per 10 s window for its busiest second: 2 (20 q/s), then 1 (5 q/s).
    assert bounds["static_packed"] == pytest.approx((2 + 1) * CPU_HOURLY * 10 / 3600)
    assert bounds["best_packed"] == bounds["static_packed"]  # one variant: static's is the best there is


def test_the_best_packed_bound_splits_classes_only_where_whole_workers_allow_it():
    # Two classes of one task over 20 s: SMALL_CPU (50 rows/s a worker) meets only the first, CPU_B1
    # (10 rows/s a worker) both; every worker costs the same.
    classes = [("vision", 0.70, 1000.0), ("vision", 0.75, 1000.0)]
    window = CPU_HOURLY * 10 / 3600  # one worker for one 10 s window

    def best(first_rate: float) -> float:
        counts = np.array([np.full(20, first_rate), np.full(20, 5.0)])
        return best_packed_cost(counts, classes, [0, 1], [CPU_B1, SMALL_CPU], CPU_B1, PolicyConfig())

    assert best(5.0) == pytest.approx(2 * window)  # 10 rows/s fill one CPU_B1 worker: splitting would take two
    assert best(40.0) == pytest.approx(4 * window)  # one SMALL_CPU + one CPU_B1 worker, not five of CPU_B1


def _run(violations: float, cost: float) -> dict:
    return {"slo_violation_rate": violations, "cost_usd": cost}


def test_the_goal_table_says_which_goals_are_met():
    met = {"infaas": _run(0.001, 10.0), "static": _run(0.002, 25.0), "replica-only": _run(0.01, 12.0)}
    missed = {"infaas": _run(0.003, 10.0), "static": _run(0.002, 25.0), "replica-only": _run(0.01, 12.0)}
    bounds = {0: {"fluctuating-low": {"cheapest_fluid": 5.0, "static_fluid": 6.0, "static_packed": 12.5,
                                      "best_packed": 10.0}}}
    text = "\n".join(goal_section({0: {"fluctuating-low": met}}, bounds))
    assert "| fluctuating-low | 0 | 0.10% / 0.20% / 1.00% | yes | 10.00x | 2.50x (2x) | 5.00x / 4.17x / 2.00x " \
           "/ 2.50x | 50% / 60% / 125% / 100% | yes |" in text and "Every goal met." in text
    text = "\n".join(goal_section({1: {"bursty": missed}}, {}))
    assert "| no | 3.33x | 2.50x (1.5x) |" in text and text.count("**no** |") == 1
    # A goal beyond what whole workers allow says so.
    beyond = {0: {"fluctuating-low": {**bounds[0]["fluctuating-low"], "best_packed": 20.0}}}
    cheap = {"infaas": _run(0.001, 20.0), "static": _run(0.002, 25.0), "replica-only": _run(0.01, 12.0)}
    assert "**no** (goal > best packed) |" in "\n".join(goal_section({0: {"fluctuating-low": cheap}}, beyond))


def test_the_service_spread_reads_the_tail_at_the_percentile_its_source_holds():
    from dataclasses import replace

    from infaas.sim.engine import service_spread
    measured = replace(CPU_B1, latency_p50_ms=100.0, latency_p99_ms=200.0)
    assert service_spread(measured) == pytest.approx(np.log(2.0) / 2.3263, rel=1e-3)  # our profiler: the 99th
    imported = replace(measured, source="imported")
    assert service_spread(imported) == pytest.approx(np.log(2.0) / 1.2816, rel=1e-3)  # Proteus: the 90th
    assert service_spread(replace(measured, latency_p99_ms=100.0)) == 0.0  # no tail: every run the median
    assert service_spread(replace(measured, latency_p50_ms=0.0)) == 0.0


def test_runs_vary_as_the_profiled_tail_and_not_without_it():
    from dataclasses import replace

    from tests.unit.test_sim_engine import run, trace
    tailed = replace(CPU_B1, latency_p50_ms=100.0, latency_p99_ms=200.0)  # 100 ms median, 200 ms at the 99th
    arrivals = np.arange(0, 4_000_000, 1000.0)  # one query a second: no queue, a query's latency is its run
    sim, _ = run([tailed], [trace(arrivals, slo=10_000.0)])
    latency = sim.finish - sim.workload.arrival_ms
    assert np.median(latency) == pytest.approx(100.0, rel=0.03)
    assert np.percentile(latency, 99) == pytest.approx(200.0, rel=0.12)
    sim, _ = run([tailed], [trace(arrivals, slo=10_000.0)], service_variance=False)
    assert np.allclose(sim.finish - sim.workload.arrival_ms, 100.0)


def test_the_proteus_import_fits_each_variant_to_its_own_batch_sizes_and_keeps_the_90th_percentile(tmp_path):
    from infaas.proteus_profiles import load_proteus_profiles
    (tmp_path / "model_variants").mkdir()
    (tmp_path / "model_variants" / "resnet.csv").write_text("resnet18,100\n")
    header = "Model,Accel,Trials,batchsize,50th_pct,90th_pct,avg_latency(ms),Min,Max,Accuracy,Normalized_Accuracy"
    rows = ["resnet18,onnxruntime_gpu_pascal,1000,1,2.0,2.2,2.1,1.9,9.0,69.8,100",
            "resnet18,onnxruntime_gpu_pascal,1000,2,3.0,,3.1,2.9,12.0,69.8,100",  # no 90th: only the maximum
            "resnet18,onnxruntime_gpu_pascal,100,4,7.0,7.5,7.1,6.9,8.0,69.8,100",
            "resnet18,onnxruntime_gpu_pascal,100,4,9.0,9.5,9.1,8.9,10.0,69.8,100"]  # batch 4 measured twice
    (tmp_path / "profiles.csv").write_text("\n".join([header, *rows]) + "\n")
    b1, b2, b4 = sorted(load_proteus_profiles(tmp_path / "profiles.csv"), key=lambda v: v.batch_size)
    assert (b1.latency_p50_ms, b1.latency_p99_ms, b1.source) == (2.0, 2.2, "imported")
    assert (b2.latency_p50_ms, b2.latency_p99_ms) == (3.0, 3.0)  # the tail is unknown: the median, no variance
    assert (b4.latency_p50_ms, b4.latency_p99_ms) == (8.0, 8.5)  # one variant, the two measurements' mean
    # Each variant's line runs through the batch sizes it runs: exact for batch 1 and 2, whatever the larger do.
    assert (b1.slope_ms, b1.intercept_ms) == (0.0, 2.0)
    assert (b2.latency_at(1), b2.latency_at(2)) == (pytest.approx(2.0), pytest.approx(3.0))
    assert b4.latency_at(4) == pytest.approx(8.0, rel=0.05)  # least squares over 1, 2, 4, 4 (through the origin)
    assert b4.latency_at(1) == pytest.approx(72 / 37)


def test_the_proteus_import_assumes_load_time_and_memory_from_the_model_size(tmp_path):
    from infaas.proteus_profiles import PARAMETERS_M, assumed_load_ms, assumed_peak_memory_mb
    loads = {model: assumed_load_ms(model, "cpu") for model in PARAMETERS_M}
    gpu_loads = [assumed_load_ms(model, "gpu-p100") for model in PARAMETERS_M]
    # Inside the range INFaaS reports (0.59-11 s), the largest model slowest, a GPU slower than a CPU.
    assert 500 <= min(loads.values()) < 600 and 10_000 < max(gpu_loads) <= 11_000
    assert max(loads, key=loads.get) == "gpt2-xl" and min(loads, key=loads.get) == "mobilenet0.25"
    assert all(g > c for g, c in zip(gpu_loads, loads.values(), strict=True))
    assert assumed_peak_memory_mb("resnet50_v1") == pytest.approx(2 * 25.6 * 4 + 100)  # two copies of 102 MB
    assert (assumed_load_ms("my-own-model", "cpu"), assumed_peak_memory_mb("my-own-model")) == (1000.0, 0.0)

    from infaas.sim.catalogue import load_imported
    (tmp_path / "model_variants").mkdir()
    (tmp_path / "model_variants" / "gpt2.csv").write_text("gpt2,100\ngpt2-xl,100\n")
    header = "Model,Accel,Trials,batchsize,50th_pct,90th_pct,avg_latency(ms),Min,Max,Accuracy,Normalized_Accuracy"
    rows = [f"{model},{accel},100,1,50.0,55.0,51.0,49.0,60.0,40.0,100"
            for model in ("gpt2", "gpt2-xl") for accel in ("onnxruntime_cpu", "onnxruntime_gpu_pascal")]
    (tmp_path / "profiles.csv").write_text("\n".join([header, *rows]) + "\n")
    imported = {(v.model, v.hardware): v for v in load_imported(tmp_path / "profiles.csv")}
    # gpt2-xl needs 12.6 GB: a 16 GB P100 holds it, a 4 GB CPU worker does not (not servable there).
    assert set(imported) == {("gpt2", "cpu"), ("gpt2", "gpu-p100"), ("gpt2-xl", "gpu-p100")}
    assert imported[("gpt2-xl", "gpu-p100")].load_ms > 10 * imported[("gpt2", "cpu")].load_ms / 2


def test_memory_limits_co_location_in_the_simulator():
    from dataclasses import replace

    from tests.unit.test_policies_scaling import variant
    from tests.unit.test_sim_engine import run

    def workers_for_two_replicas(memory_mb: float) -> int:
        # 1-vCPU replicas of 100 ms; 15 queries a second need two of them (static provisions the peak).
        one_thread = replace(variant("resnet:ort:cpu-1t:b1", threads=1), peak_memory_mb=memory_mb)
        arrivals = np.arange(0, 60_000, 1000 / 15)
        sim, summary = run([one_thread], [trace(arrivals, slo=1000.0)])
        assert sim.baseline.replicas["vision"] == 2 and summary["slo_violation_rate"] == 0.0
        return summary["workers_peak"]

    assert workers_for_two_replicas(1024.0) == 1  # both on one 2-vCPU, 4 GB worker
    assert workers_for_two_replicas(3 * 1024.0) == 2  # 3 GB each: a worker holds only one
