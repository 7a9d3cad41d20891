"""What `infaas models` and `infaas variants` show: plain records, for tables and for `--json`."""

from __future__ import annotations

from collections import defaultdict

from ..catalog import ModelInfo, ProfilePoint, Variant
from ..store import Store


def variant_record(v: Variant, state: str = "INACTIVE") -> dict:
    return {"variant": v.variant_id, "base": v.base_id, "model": v.model, "model_version": v.model_version,
            "task": v.task, "app_id": v.app_id, "public": v.public, "optimizer": v.optimizer,
            "hardware": v.hardware, "threads": v.threads, "batch": v.batch_size, "accuracy": v.accuracy,
            "latency_ms": v.latency_p50_ms, "latency_p99_ms": v.latency_p99_ms, "slope_ms": v.slope_ms,
            "intercept_ms": v.intercept_ms, "throughput_qps": v.throughput_qps, "load_ms": v.load_ms,
            "peak_memory_mb": v.peak_memory_mb, "cost_per_1k": v.cost_per_1k, "artifact": v.artifact,
            "artifact_bytes": v.artifact_bytes, "source": v.source, "state": state, "profiled_at": v.profiled_at}


def variant_records(store: Store, task: str | None = None, model: str | None = None) -> list[dict]:
    """Every variant (of `task`, of `model`), with its dynamic state, sorted for reading."""
    variants = store.variants_for_task(task) if task else store.all_variants()
    states = {row["variant_id"]: row.get("state") or "INACTIVE" for row in store.variant_states()}
    records = [variant_record(v, states.get(v.variant_id, "INACTIVE")) for v in variants
               if model is None or v.model == model]
    return sorted(records, key=lambda r: (r["task"], r["model"], r["optimizer"], r["hardware"], r["threads"],
                                          r["batch"]))


def base_rows(records: list[dict]) -> list[dict]:
    """One row per variant base (model, optimizer, hardware, threads): the smallest and largest batch."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["base"]].append(record)
    rows = []
    for base, members in groups.items():
        members.sort(key=lambda r: r["batch"])
        low, high = members[0], members[-1]
        busy = [f"{r['state']} b{r['batch']}" for r in members if r["state"] != "INACTIVE"]
        rows.append({"base": base, "model": low["model"], "task": low["task"], "optimizer": low["optimizer"],
                     "hardware": low["hardware"], "threads": low["threads"], "accuracy": low["accuracy"],
                     "batches": [r["batch"] for r in members], "low": low, "high": high,
                     "throughput_qps": max(r["throughput_qps"] for r in members), "load_ms": low["load_ms"],
                     "peak_memory_mb": low["peak_memory_mb"], "source": low["source"],
                     "state": ", ".join(busy) or "INACTIVE"})
    return rows


def model_records(store: Store, task: str | None = None) -> list[dict]:
    """Registered models (newest version of each), with a summary of their variants."""
    models: list[ModelInfo] = store.models_for_task(task) if task else store.list_models()
    newest: dict[tuple[str, str], ModelInfo] = {}
    for m in models:
        key = (m.task, m.model)
        if key not in newest or m.version > newest[key].version:
            newest[key] = m
    records = variant_records(store, task)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_model[record["model"]].append(record)
    out = []
    for (_, name), m in sorted(newest.items()):
        mine = [r for r in by_model.get(name, []) if r["model_version"] == m.version]
        low = [r for r in mine if r["batch"] == min((x["batch"] for x in mine), default=0)]
        high = [r for r in mine if r["batch"] == max((x["batch"] for x in mine), default=0)]
        out.append({"model": name, "task": m.task, "version": m.version, "app_id": m.app_id, "public": m.public,
                    "architecture": m.architecture, "metric": m.metric, "accuracy": m.accuracy,
                    "variants": len(mine), "optimizers": sorted({r["optimizer"] for r in mine}),
                    "accuracy_range": [min((r["accuracy"] for r in mine), default=m.accuracy),
                                       max((r["accuracy"] for r in mine), default=m.accuracy)],
                    "best_latency_ms_min_batch": min((r["latency_ms"] for r in low), default=None),
                    "best_latency_ms_max_batch": min((r["latency_ms"] for r in high), default=None),
                    "max_batch": high[0]["batch"] if high else None,
                    "max_throughput_qps": max((r["throughput_qps"] for r in mine), default=None),
                    "min_load_ms": min((r["load_ms"] for r in mine), default=None),
                    "min_cost_per_1k": min((r["cost_per_1k"] for r in mine), default=None),
                    "active": sum(r["state"] != "INACTIVE" for r in mine),
                    "artifact": m.artifact, "sha256": m.sha256, "size_bytes": m.size_bytes,
                    "validation_artifact": m.validation_artifact, "registered_at": m.registered_at})
    return out


def import_profiles(store: Store, csv_path, hardware_catalog: str | None = None, cpu_threads: int = 4) -> list[Variant]:
    """Load the public Proteus profiles into the store, marked `source=imported` (not measured here)."""
    from ..proteus_profiles import load_proteus_profiles
    variants = load_proteus_profiles(csv_path, cpu_threads=cpu_threads, hardware_catalog=hardware_catalog)
    for v in variants:
        store.put_variant(v)
        # runs=0: these points were measured elsewhere; mean is not in the file, p50 stands in
        store.put_profile(ProfilePoint(v.base_id, v.batch_size, v.latency_p50_ms, v.latency_p99_ms,
                                       v.latency_p50_ms, v.throughput_qps, 0))
    return variants
