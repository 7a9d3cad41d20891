"""Workloads for the simulator: trace formats, time and rate scaling, requirements per query."""

from __future__ import annotations

import numpy as np
import pytest

from infaas.sim.catalogue import (
    CPU_BATCHES,
    CPU_OPTIMIZERS,
    DERIVED_GPUS,
    GPU_BATCHES,
    GPU_OPTIMIZERS,
    servable,
    synthetic_catalogue,
)
from infaas.sim.traces import (
    Trace,
    build_workload,
    flat_trace,
    load_trace,
    read_trace,
    scale_trace,
    task_demands,
    trace_files,
)
from tests.unit.test_policies_scaling import CPU_B1, GPU_B8, variant


def test_reads_query_traces_and_rate_csvs(tmp_path):
    query_trace = tmp_path / "resnet.txt"
    query_trace.write_text("500,1,300\n100,1,300\n250,2,75\n")
    trace = read_trace(query_trace)
    assert trace.task == "resnet" and list(trace.arrival_ms) == [100, 250, 500]  # sorted by arrival
    assert list(trace.deadline_ms) == [300, 75, 300] and list(trace.qos) == [1, 2, 1]
    rates = tmp_path / "bert.csv"
    rates.write_text("second,qps,deadline_ms\n0,100,200\n1,0,200\n2,50,150\n")
    trace = read_trace(rates, rng=np.random.default_rng(0))
    assert trace.task == "bert" and 100 < len(trace) < 200
    assert (trace.arrival_ms < 1000).sum() > 70 and not ((trace.arrival_ms >= 1000) & (trace.arrival_ms < 2000)).any()
    assert set(trace.deadline_ms[trace.arrival_ms >= 2000]) == {150.0}
    assert [task for task, _ in trace_files(f"yolo={query_trace}")] == ["yolo"]
    assert len(trace_files(str(tmp_path))) == 2
    with pytest.raises(ValueError):
        trace_files(str(tmp_path / "missing.txt"))


def test_a_rate_csv_scales_through_its_rates_into_poisson_arrivals(tmp_path):
    rates = tmp_path / "step.csv"
    rates.write_text("second,qps\n" + "".join(f"{s},2.0\n" for s in range(100)))
    trace = load_trace(rates, "vision", 1.0, 30.0, np.random.default_rng(0))
    assert abs(len(trace) - 6000) < 300 and trace.task == "vision"
    gaps = np.diff(trace.arrival_ms)
    # Exponential gaps (coefficient of variation 1), not clumps of 30 copies of each query drawn at 2 q/s (1.7).
    assert 0.9 < gaps.std() / gaps.mean() < 1.1
    stretched = load_trace(rates, "vision", 2.0, 1.0, np.random.default_rng(0))
    assert abs(len(stretched) - 200) < 50 and 190_000 < stretched.arrival_ms.max() <= 200_000


def test_time_scale_stretches_and_rate_scale_multiplies_keeping_the_shape():
    rng = np.random.default_rng(0)
    base = flat_trace("vision", 100.0, 60.0, 300.0, rng)
    stretched = scale_trace(base, 3.0, 1.0, rng)
    assert np.allclose(stretched.arrival_ms, base.arrival_ms * 3)
    tripled = scale_trace(base, 1.0, 3.0, rng)
    assert len(tripled) == 3 * len(base) and np.all(np.diff(tripled.arrival_ms) >= 0)
    assert abs(tripled.duration_ms - base.duration_ms) < 100
    thinned = scale_trace(base, 1.0, 0.25, rng)
    assert abs(len(thinned) - len(base) / 4) < 0.1 * len(base)
    both = scale_trace(base, 10.0, 10.0, rng)  # ten times longer at the same rate
    assert abs(len(both) / (both.duration_ms / 1000) - 100.0) < 5


def test_accuracy_demands_scale_with_the_best_variant_that_meets_the_slo():
    slow_but_accurate = variant("huge:ort:cpu-2t:b1", intercept=400.0, accuracy=0.95)
    catalogue = [CPU_B1, GPU_B8, slow_but_accurate]
    arrivals = np.arange(0, 20_000, 10.0)
    trace = Trace("vision", arrivals, np.full(len(arrivals), 300.0), np.ones(len(arrivals), dtype=np.int16))
    workload = build_workload([trace], catalogue, np.random.default_rng(0))
    # 0.95 cannot be met within 300 ms under load (2 x 400 ms): 0.75 sets the scale, not 0.95.
    assert {round(c[1], 4) for c in workload.classes} == {0.0, round(0.9 * 0.75, 4), round(0.95 * 0.75, 4),
                                                          round(0.99 * 0.75, 4)}
    shares = np.bincount(workload.demand_class) / len(workload)
    assert np.allclose(shares, 0.25, atol=0.03)  # qos level 1: four equally likely demands
    demand = task_demands(workload)[0]
    assert demand.peak_qps == 100.0 and demand.min_slo_ms == 300.0
    assert demand.max_accuracy == pytest.approx(0.99 * 0.75)


def test_synthetic_catalogue_is_about_4000_labelled_variants(proteus_data_set):
    variants = synthetic_catalogue(proteus_data_set.profiles)
    if proteus_data_set.kind == "real":
        assert 4000 <= len(variants) <= 4500
    else:  # every model of the stand-in is measured on CPU, P100 and A100: all its derived variants
        per_model = (len(CPU_OPTIMIZERS) * 2 * len(CPU_BATCHES)  # 2: whole worker and one vCPU
                     + len(GPU_OPTIMIZERS) * len(GPU_BATCHES) * (2 + len(DERIVED_GPUS)))
        assert len(variants) == per_model * len({v.model for v in variants})
    assert {v.source for v in variants} == {"imported", "synthetic"}
    assert all(servable(v) for v in variants)
    assert {v.optimizer for v in variants} >= {"ort", "ort-int8", "tvm", "tensorrt", "ort-fp16"}
    assert max(v.batch_size for v in variants) == 64
    trt = next(v for v in variants if v.optimizer == "tensorrt" and v.batch_size == 1 and v.hardware == "gpu-a100")
    # Derived from the fit over every measured batch size: the imported variant of the largest batch's.
    base = max((v for v in variants if v.model == trt.model and v.source == "imported" and v.hardware == "gpu-a100"),
               key=lambda v: v.batch_size)
    assert trt.latency_at(1) == pytest.approx(0.5 * base.latency_at(1))
