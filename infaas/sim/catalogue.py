"""Variant catalogues for the simulator: imported profiles, our store, or a labelled synthetic one.

Imported (`aggregate_profiled.csv`): `imported.load_proteus_profiles` with CPU variants sized to one
CPU worker (`threads` = the catalogue's CPU `worker_units`, 2 vCPUs), since the file does not say how
many cores Proteus measured on; this is optimistic for CPU variants and is stated in the report.

Servable: variants whose linear latency model is positive at batch 1 and at their own batch (a fit
that would go negative is taken through the origin instead, `proteus_profiles.linear_fit`), and whose
peak memory fits one worker of their hardware (gpt2-large and larger do not fit a 4 GB CPU worker).

Synthetic (`synthetic_catalogue`, about 4,400 variants; `source="synthetic"`, ids carry the
optimizer): derived from the Proteus profiles to give the scale of INFaaS's 4,032-variant zoo, for
speed measurements. For every measured (model, accelerator) fit:
  * optimizers, with assumed latency and accuracy factors: CPU `ort` (1, 1), `ort-int8` (0.55, 0.99),
    `tvm` (0.8, 1); GPU `ort` (1, 1), `ort-fp16` (0.7, 0.999), `tensorrt` (0.5, 0.998);
  * CPU variants on the whole worker (2 threads) and on one vCPU (latency x 1.8);
  * an extra GPU kind, `gpu-t4`, at 1.2 x the P100 latency;
  * batch sizes 1..16 on CPU, 1..64 on GPU, on the linear latency model of the fit;
  * load latency and memory as the measured fit's (`proteus_profiles.assumed_load_ms`), TensorRT
    engines 1 s longer to load.
The measured points themselves (`ort`, 2 threads on CPU, measured batch sizes) stay as imported.
"""

from __future__ import annotations

from pathlib import Path

from ..catalog import Variant, variant_id
from ..hardware import cost_per_1k, hardware
from ..paths import PROFILES_CSV, proteus_dir
from ..proteus_profiles import load_proteus_profiles

CPU_OPTIMIZERS = (("ort", 1.0, 1.0), ("ort-int8", 0.55, 0.99), ("tvm", 0.8, 1.0))
GPU_OPTIMIZERS = (("ort", 1.0, 1.0), ("ort-fp16", 0.7, 0.999), ("tensorrt", 0.5, 0.998))
ONE_THREAD_FACTOR = 1.8
DERIVED_GPUS = {"gpu-t4": ("gpu-p100", 1.2)}
CPU_BATCHES = (1, 2, 4, 8, 16)
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64)
TENSORRT_EXTRA_LOAD_MS = 1000.0


def servable(variant: Variant, hardware_catalog: str | None = None) -> bool:
    memory_mb = hardware(variant.hardware, hardware_catalog).memory_mb
    return (variant.latency_at(1) > 0 and variant.latency_at(variant.batch_size) > 0
            and (memory_mb <= 0 or variant.peak_memory_mb <= memory_mb))


def cpu_worker_threads(hardware_catalog: str | None = None) -> int:
    return hardware("cpu", hardware_catalog).worker_units


def load_imported(csv_path: str | Path, hardware_catalog: str | None = None) -> list[Variant]:
    variants = load_proteus_profiles(csv_path, cpu_threads=cpu_worker_threads(hardware_catalog),
                                     hardware_catalog=hardware_catalog)
    return [v for v in variants if servable(v, hardware_catalog)]


def load_catalogue(spec: str, settings=None, hardware_catalog: str | None = None) -> list[Variant]:
    """`store` (our metadata store, read-only), `synthetic[:CSV]`, or a Proteus profile CSV."""
    if spec == "store":
        from ..store import Store
        with Store(settings) as store:
            variants = store.all_variants()
        return [v for v in variants if servable(v, hardware_catalog)]
    if spec.startswith("synthetic"):
        _, _, path = spec.partition(":")
        return synthetic_catalogue(path or proteus_dir() / PROFILES_CSV, hardware_catalog)
    if not Path(spec).exists():
        raise ValueError(f"profiles {spec!r}: no such file (give a Proteus CSV, `store` or `synthetic[:CSV]`)")
    return load_imported(spec, hardware_catalog)


def synthetic_catalogue(csv_path: str | Path, hardware_catalog: str | None = None) -> list[Variant]:
    measured = load_imported(csv_path, hardware_catalog)
    fits: dict[tuple[str, str], Variant] = {}  # the largest batch's: its fit spans every measured batch size
    for v in measured:
        key = (v.model, v.hardware)
        if key not in fits or v.batch_size > fits[key].batch_size:
            fits[key] = v
    by_id = {v.variant_id: v for v in measured}
    threads_full = cpu_worker_threads(hardware_catalog)
    for (_, hw), base in sorted(fits.items()):
        targets = [(hw, 1.0)] + [(derived, factor) for derived, (source, factor) in DERIVED_GPUS.items()
                                 if source == hw]
        for target, hw_factor in targets:
            for variant in _derived(base, target, hw_factor, threads_full, hardware_catalog):
                by_id.setdefault(variant.variant_id, variant)
    return sorted(by_id.values(), key=lambda v: v.variant_id)


def _derived(base: Variant, hw: str, hw_factor: float, threads_full: int, hardware_catalog: str | None):
    cpu = hw == "cpu"
    thread_options = ((threads_full, 1.0), (1, ONE_THREAD_FACTOR)) if cpu else ((1, 1.0),)
    for optimizer, latency_factor, accuracy_factor in (CPU_OPTIMIZERS if cpu else GPU_OPTIMIZERS):
        for threads, thread_factor in thread_options:
            factor = latency_factor * thread_factor * hw_factor
            load = base.load_ms + (TENSORRT_EXTRA_LOAD_MS if optimizer == "tensorrt" else 0.0)
            for batch in (CPU_BATCHES if cpu else GPU_BATCHES):
                latency = factor * base.latency_at(batch)
                yield Variant(
                    task=base.task, variant_id=variant_id(base.model, optimizer, hw, threads, batch), model=base.model,
                    model_version=base.model_version, app_id=base.app_id, public=base.public, optimizer=optimizer,
                    hardware=hw, threads=threads, batch_size=batch, artifact="", artifact_bytes=0,
                    accuracy=base.accuracy * accuracy_factor, load_ms=load, latency_p50_ms=latency,
                    latency_p99_ms=latency * 1.1, slope_ms=base.slope_ms * factor,
                    intercept_ms=base.intercept_ms * factor, throughput_qps=batch * 1000.0 / latency,
                    peak_memory_mb=base.peak_memory_mb, cost_per_1k=cost_per_1k(hw, threads, batch, latency, hardware_catalog),
                    source="synthetic")
