"""Variant profiles measured elsewhere: the public Proteus profiles (ASPLOS'24 artifact).

`aggregate_profiled.csv` has, per model and accelerator, the latency of each batch size measured
with ONNX Runtime, and the model's published accuracy. Each (model, accelerator, batch size) row
becomes one `Variant` with `source="imported"`, whose linear latency model is fitted to the medians of
the batch sizes up to its own (the batches it runs). What the file does not say is filled in by stated
assumptions, never presented as measured:
  - load latency and memory, which the file does not give, from the model's size: its published
    parameter count (`PARAMETERS_M`) as fp32 weights. A load reads the weights and builds the session:
    `LOAD_BASE_MS` per hardware kind (a GPU adds its context and the copy) plus `LOAD_MS_PER_MB`, which
    puts the smallest model (mobilenet0.25, 2 MB) at 0.5 s on CPU and the largest (gpt2-xl, 6.2 GB) at
    11 s on GPU, the range INFaaS reports (0.59-11 s). Peak memory is `MEMORY_WEIGHT_COPIES` copies of
    the weights (the initializers and the optimized graph while the session is built) plus
    `RUNTIME_MB`; activations are not counted. A model not in the table keeps `UNKNOWN_LOAD_MS` and
    memory 0 (unknown);
  - tail latency: the file's 90th percentile is stored as `latency_p99_ms` (the simulator reads it as
    the 90th, `sim.engine.TAIL_PERCENTILE`). Where it is blank (160 of the 416 GPU rows) the tail is
    unknown and the median is stored: the file's maximum there (typically 3.6-3.8x the median) is the
    worst of its trials, no percentile;
  - cost: from the hardware catalogue, the CPU rows as `cpu_threads` vCPUs (default 4);
Names are made plain for topic names: `prajjwal1/bert-tiny` -> `prajjwal1-bert-tiny`.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .catalog import Variant, variant_id
from .hardware import cost_per_1k

ACCELERATORS = {"onnxruntime_cpu": "cpu", "onnxruntime_gpu_pascal": "gpu-p100", "onnxruntime_gpu_ampere": "gpu-a100"}

# Published parameter counts, millions (the models' papers and model cards).
PARAMETERS_M = {
    "albert-base-v2": 11.7, "albert-large-v2": 17.7, "albert-xlarge-v2": 58.7, "albert-xxlarge-v2": 223.0,
    "bert-base-uncased": 110.0, "bert-large-uncased": 340.0, "roberta-base": 125.0, "roberta-large": 355.0,
    "prajjwal1/bert-tiny": 4.4, "prajjwal1/bert-mini": 11.3, "prajjwal1/bert-small": 28.8,
    "prajjwal1/bert-medium": 41.4,
    "densenet121": 8.0, "densenet161": 28.7, "densenet169": 14.1, "densenet201": 20.0,
    "efficientnet-b0": 5.3, "efficientnet-b1": 7.8, "efficientnet-b3": 12.2, "efficientnet-b5": 30.4,
    "efficientnet-b7": 66.3,
    "gpt2": 124.0, "gpt2-medium": 355.0, "gpt2-large": 774.0, "gpt2-xl": 1558.0,
    "mobilenet0.25": 0.47, "mobilenet0.5": 1.3, "mobilenet0.75": 2.6, "mobilenet1.0": 4.2,
    "resnest14": 10.6, "resnest26": 17.1, "resnest50": 27.5, "resnest269": 110.9,
    "resnet18_v1": 11.7, "resnet34_v1": 21.8, "resnet50_v1": 25.6, "resnet101_v1": 44.5, "resnet152_v1": 60.2,
    "t5-small": 60.5, "t5-base": 223.0, "t5-large": 738.0,
    "yolov5n": 1.9, "yolov5s": 7.2, "yolov5m": 21.2, "yolov5l": 46.5, "yolov5x": 86.7,
}
LOAD_BASE_MS = {"cpu": 500.0, "gpu": 1000.0}
LOAD_MS_PER_MB = 1.6
MEMORY_WEIGHT_COPIES = 2.0
RUNTIME_MB = 100.0
UNKNOWN_LOAD_MS = {"cpu": 1000.0, "gpu": 2000.0}


def weights_mb(model: str) -> float | None:
    """The model's fp32 weights in MB, or None when its size is not in the table."""
    params = PARAMETERS_M.get(model)
    return None if params is None else params * 4.0


def assumed_load_ms(model: str, hardware: str) -> float:
    kind = "cpu" if hardware == "cpu" else "gpu"
    size = weights_mb(model)
    return UNKNOWN_LOAD_MS[kind] if size is None else LOAD_BASE_MS[kind] + LOAD_MS_PER_MB * size


def assumed_peak_memory_mb(model: str) -> float:
    size = weights_mb(model)
    return 0.0 if size is None else MEMORY_WEIGHT_COPIES * size + RUNTIME_MB


def plain_name(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def model_families(variants_dir: Path) -> dict[str, str]:
    """Model name (as in the profiles) -> family (the task), from model_variants/FAMILY.csv."""
    families = {}
    for path in sorted(variants_dir.glob("*.csv")):
        for row in csv.reader(path.read_text().splitlines()):
            if row:
                families[row[0]] = path.stem
    return families


def linear_fit(batches: list[int], latencies: list[float]) -> tuple[float, float]:
    """Least-squares `latency(b) = slope*b + intercept` (INFaaS's latency model).

    The intercept is kept >= 0: when latency grows faster than linearly (caches), the free fit
    crosses zero and would promise a near-free small batch; the fit through the origin is then
    the conservative estimate.
    """
    x, y = np.asarray(batches, float), np.asarray(latencies, float)
    if np.ptp(x) == 0:  # one batch size (measured once or more): a constant
        return 0.0, float(y.mean())
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0:
        slope, intercept = float(x @ y / (x @ x)), 0.0
    return float(slope), float(intercept)


def load_proteus_profiles(csv_path: str | Path, *, cpu_threads: int = 4, app_id: str = "imported",
                          hardware_catalog: str | None = None) -> list[Variant]:
    csv_path = Path(csv_path)
    families = model_families(csv_path.parent / "model_variants")
    points: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with csv_path.open() as handle:
        for row in csv.DictReader(handle):
            if row["Accel"] in ACCELERATORS:
                points[(row["Model"], row["Accel"])].append(row)
    variants = []
    for (model, accel), rows in sorted(points.items()):
        hardware = ACCELERATORS[accel]
        threads = cpu_threads if hardware == "cpu" else 1
        batches = np.array([int(r["batchsize"]) for r in rows])
        medians = np.array([float(r["50th_pct"]) for r in rows])
        name = plain_name(model)
        for batch in sorted(set(batches.tolist())):
            # Fitted over the batch sizes the variant runs (up to its own): one line over every batch size
            # misstated batch 1 by a median 10% (up to 3.4x) for the larger batches' sake.
            slope, intercept = linear_fit(batches[batches <= batch].tolist(), medians[batches <= batch].tolist())
            same = [r for r, b in zip(rows, batches, strict=True) if b == batch]  # measured more than once: the mean
            p50 = float(np.mean([float(r["50th_pct"]) for r in same]))
            tails = [float(r["90th_pct"]) for r in same if r["90th_pct"]]
            tail = float(np.mean(tails)) if tails else p50
            variants.append(Variant(
                task=plain_name(families.get(model, name)), variant_id=variant_id(name, "ort", hardware, threads, batch),
                model=name, model_version=1, app_id=app_id, public=True, optimizer="ort", hardware=hardware,
                threads=threads, batch_size=batch, artifact="", artifact_bytes=0,
                accuracy=float(same[0]["Accuracy"]) / 100.0, load_ms=assumed_load_ms(model, hardware),
                latency_p50_ms=p50, latency_p99_ms=tail, slope_ms=slope, intercept_ms=intercept,
                throughput_qps=batch * 1000.0 / p50 if p50 > 0 else 0.0, peak_memory_mb=assumed_peak_memory_mb(model),
                cost_per_1k=cost_per_1k(hardware, threads, batch, p50, hardware_catalog), source="imported"))
    return variants
