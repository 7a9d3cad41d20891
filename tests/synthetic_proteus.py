"""A synthetic stand-in for the Proteus data, in its formats, for tests on any clone.

The real profiles and traces may be used for comparison only, so they are not in the project;
this writes a small made-up set with the same layout (`aggregate_profiled.csv`,
`model_variants/FAMILY.csv`, `traces/SCENARIO/FAMILY.txt`) and the same shapes: per-batch
latencies linear in the batch size with a few percent of seeded noise, on the three accelerators
Proteus measured; traces of `arrival_ms,qos_level,deadline_ms` lines (flat, a wave, and a flat
base with three 8x bursts). Nothing here is measured: the numbers are invented, seeded, and
checked only for being self-consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from infaas.paths import PROFILES_CSV, proteus_data, proteus_dir

HEADER = "Model,Accel,Trials,batchsize,50th_pct,90th_pct,avg_latency(ms),Min,Max,Accuracy,Normalized_Accuracy"
# family -> (model, top-1 accuracy %, CPU batch-1 latency ms); GPUs are ACCEL_SPEEDUP times faster
FAMILIES = {
    "resnet": (("resnet18_v1", 69.8, 20.0), ("resnet50_v1", 76.1, 45.0), ("resnet101_v1", 77.4, 80.0)),
    "bert": (("bert-tiny", 70.0, 6.0), ("bert-base-uncased", 84.5, 60.0)),
    "mobilenet": (("mobilenet_v2", 71.9, 9.0), ("mobilenet_v3_large", 75.2, 11.0)),
}
ACCEL_BATCHES = {"onnxruntime_cpu": (1, 2, 4, 8, 16), "onnxruntime_gpu_pascal": (1, 2, 4, 8, 16),
                 "onnxruntime_gpu_ampere": (1, 2, 4, 8, 16, 32, 64)}
ACCEL_SPEEDUP = {"onnxruntime_cpu": 1.0, "onnxruntime_gpu_pascal": 6.0, "onnxruntime_gpu_ampere": 12.0}
SCENARIOS = {  # name -> (deadline ms, shape)
    "low_load_300": (300.0, "wave"),
    "medium-normal_load_1x": (75.0, "wave"),
    "normal-high_load_300": (300.0, "wave"),
    "zipf_exponential_bursty_300": (300.0, "bursty"),
}
DURATION_S = 90
BASE_QPS = 4.0


def profile_rows(rng: np.random.Generator) -> list[str]:
    rows = []
    for models in FAMILIES.values():
        best = max(accuracy for _, accuracy, _ in models)
        for model, accuracy, cpu_ms in models:
            for accel, batches in ACCEL_BATCHES.items():
                intercept = cpu_ms / ACCEL_SPEEDUP[accel]
                for batch in batches:
                    p50 = intercept * (0.6 + 0.4 * batch) * rng.uniform(0.97, 1.03)
                    rows.append(f"{model},{accel},1000,{batch},{p50:.4f},{1.1 * p50:.4f},{1.03 * p50:.4f},"
                                f"{0.9 * p50:.4f},{1.5 * p50:.4f},{accuracy},{100 * accuracy / best:.4f}")
    return rows


def rate_at(second: int, shape: str) -> float:
    if shape == "bursty":
        in_burst = any(start <= second < start + 5 for start in (20, 45, 70))
        return BASE_QPS * (8 if in_burst else 1)
    return BASE_QPS * (1.5 + math.sin(2 * math.pi * second / DURATION_S))


def trace_lines(shape: str, deadline_ms: float, rng: np.random.Generator) -> list[str]:
    arrivals = []
    for second in range(DURATION_S):
        count = rng.poisson(rate_at(second, shape))
        arrivals.extend(np.sort(rng.uniform(0, 1000, count)) + 1000 * second)
    return [f"{int(a)},1,{int(deadline_ms)}" for a in arrivals]


def write_synthetic_proteus(root: Path, seed: int = 0) -> Path:
    """Write the stand-in under `root` (created) and return it."""
    rng = np.random.default_rng(seed)
    (root / "model_variants").mkdir(parents=True, exist_ok=True)
    (root / PROFILES_CSV).write_text("\n".join([HEADER, *profile_rows(rng)]) + "\n")
    for family, models in FAMILIES.items():
        best = max(accuracy for _, accuracy, _ in models)
        (root / "model_variants" / f"{family}.csv").write_text(
            "".join(f"{model},{100 * accuracy / best}\n" for model, accuracy, _ in models))
    for scenario, (deadline_ms, shape) in SCENARIOS.items():
        folder = root / "traces" / scenario
        folder.mkdir(parents=True, exist_ok=True)
        for family in FAMILIES:
            (folder / f"{family}.txt").write_text("\n".join(trace_lines(shape, deadline_ms, rng)) + "\n")
    return root


def profile_count() -> int:
    return sum(len(models) * sum(len(b) for b in ACCEL_BATCHES.values()) for models in FAMILIES.values())


# -- fixtures (registered by tests/conftest.py through `pytest_plugins`) ----------------------------

@dataclass(frozen=True)
class ProteusData:
    kind: str  # "synthetic" (always there) or "real" (the Proteus artifact, where it is available)
    root: Path

    @property
    def profiles(self) -> Path:
        return self.root / PROFILES_CSV

    def trace(self, scenario: str, family: str) -> Path:
        return self.root / "traces" / scenario / f"{family}.txt"


@pytest.fixture(scope="session")
def synthetic_proteus(tmp_path_factory) -> ProteusData:
    return ProteusData("synthetic", write_synthetic_proteus(tmp_path_factory.mktemp("proteus")))


@pytest.fixture(scope="session")
def real_proteus() -> ProteusData:
    root = proteus_data()
    if root is None:  # a clone without ../shared: only the comparison with the real data is skipped
        pytest.skip(f"no Proteus data at {proteus_dir()} (set INFAAS_PROTEUS_DIR): comparison with it skipped; "
                    "the same test ran on the synthetic stand-in")
    return ProteusData("real", root)


@pytest.fixture(params=["synthetic", "real"])
def proteus_data_set(request) -> ProteusData:
    """Each test that reads Proteus data runs on the synthetic stand-in everywhere, and on the real data
    where it is available."""
    return request.getfixturevalue(f"{request.param}_proteus")
