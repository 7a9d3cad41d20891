"""Worker monitoring, as pure functions: a variant's state from what was observed in the last
second, and the "low since" bookkeeping the scaling rules wait on between ticks.

States (INFaaS, "Worker monitoring"):
  INACTIVE    no replica.
  INTERFERED  average latency above k x the profiled latency while it carries real load
              (`qps > q x thr x replicas`): co-located work contends. CPU k=2.5, q=0.5; GPU k=1.5
              (k = min(5, 15/lat) for variants faster than 10 ms), q=0.3. It stays interfered until
              the latency falls below 1.5x (GPU 1.25x) the profile with a short queue.
  OVERLOADED  the queue holds more than 0.8 x replicas x thr queries (about 0.8 s of work).
  ACTIVE      otherwise.
The profiled latency is the variant's latency at its batch size (`Variant.latency_at`), and
`thr` its per-replica throughput; for batch 1 these are exactly the reference's `1000/lat`.
"""

from __future__ import annotations

import dataclasses

from ..catalog import Variant
from .capacity import noise_headroom_rows, recent_peak_rows, replica_throughput, replicas_for
from .snapshot import (
    ACTIVE,
    INACTIVE,
    INTERFERED,
    OVERLOADED,
    PolicyConfig,
    Snapshot,
    VariantLive,
    WorkerLive,
)


def is_gpu(hardware_name: str) -> bool:
    return hardware_name != "cpu"


def interference_factor(variant: Variant, profiled_ms: float, config: PolicyConfig) -> float:
    if not is_gpu(variant.hardware):
        return config.cpu_interference_latency_factor
    if 0 < profiled_ms < config.gpu_fast_latency_ms:
        return min(config.gpu_fast_factor_cap, config.gpu_fast_factor_numerator_ms / profiled_ms)
    return config.gpu_interference_latency_factor


def classify(variant: Variant, observed_qps: float, observed_avg_latency_ms: float, queue_len: int,
             replicas: int, previous_status: str, config: PolicyConfig) -> str:
    if replicas <= 0:
        return INACTIVE
    gpu = is_gpu(variant.hardware)
    profiled = variant.latency_at(variant.batch_size)
    capacity = replicas * replica_throughput(variant)
    long_queue = queue_len > config.overload_queue_factor * capacity
    if profiled > 0:
        if previous_status == INTERFERED:
            clear = config.gpu_interference_clear_factor if gpu else config.cpu_interference_clear_factor
            if observed_avg_latency_ms >= clear * profiled or long_queue:
                return INTERFERED
        else:
            qps_factor = config.gpu_interference_qps_factor if gpu else config.cpu_interference_qps_factor
            if (observed_avg_latency_ms > interference_factor(variant, profiled, config) * profiled
                    and observed_qps > qps_factor * capacity):
                return INTERFERED
    return OVERLOADED if long_queue else ACTIVE


def variant_is_low(variant: Variant, live: VariantLive, config: PolicyConfig,
                   recent: tuple[float, ...] = ()) -> bool:
    """It could lose a replica and the delta rule would not add it back, even at the peak of the
    recent demand windows (`recent`, queries/s; SLO-first, the last `peak_window_s` of them): a lull
    has to last before it counts."""
    replicas = live.replicas + live.unplaced
    peak = (recent_peak_rows(live, recent, config)
            + noise_headroom_rows(live.qps, live.avg_rows, config))  # judged as scale-up adds: no flapping
    return replicas > 1 and replicas > replicas_for(variant, peak, config, live.demand_slo_ms)


def worker_is_low(worker: WorkerLive, config: PolicyConfig) -> bool:
    threshold = config.worker_util_low_gpu if is_gpu(worker.hardware) else config.worker_util_low_cpu
    return worker.ready and worker.utilization <= threshold


def _since(previous_since: int, low: bool, now_ms: int) -> int:
    if not low:
        return 0
    return previous_since or max(now_ms, 1)  # 0 means "not low", so a low reading at t=0 counts from 1 ms


def strictest_demands(old: VariantLive | None, state: VariantLive, now_ms: int, config: PolicyConfig) -> dict:
    """The highest accuracy and tightest SLO demanded over about the last `peak_window_s`: the previous
    window's, unless the current report's are as strict or that window has passed (then the current
    report starts a new one)."""
    accuracy, slo = state.demand_accuracy, state.demand_slo_ms
    if old is None or not old.window_since_ms or now_ms - old.window_since_ms >= config.peak_window_s * 1000:
        return {"window_accuracy": accuracy, "window_slo_ms": slo, "window_since_ms": now_ms}
    kept_accuracy = max(old.window_accuracy, accuracy)
    kept_slo = min(s for s in (old.window_slo_ms, slo) if s > 0) if (old.window_slo_ms or slo) else 0.0
    stricter = accuracy >= old.window_accuracy and (not old.window_slo_ms or 0 < slo <= old.window_slo_ms)
    return {"window_accuracy": kept_accuracy, "window_slo_ms": kept_slo,
            "window_since_ms": now_ms if stricter else old.window_since_ms}


def track(previous: Snapshot | None, new: Snapshot, config: PolicyConfig | None = None) -> Snapshot:
    """`new` with `low_since_ms` carried over from `previous` (or started, or cleared), and the strictest
    demands of the window (`strictest_demands`)."""
    config = config or PolicyConfig()
    live = dict(new.live)
    for variant_id, state in new.live.items():
        variant = new.variants.get(variant_id)
        if variant is None:
            continue
        before = previous.live_of(variant_id) if previous is not None else None
        low = variant_is_low(variant, state, config, new.demand.get(variant_id, ()))
        since = _since(before.low_since_ms if before else 0, low, new.at_ms)
        tracked = dataclasses.replace(state, low_since_ms=since, **strictest_demands(before, state, new.at_ms, config))
        if tracked != state:
            live[variant_id] = tracked
    workers = dict(new.workers)
    for worker_id, worker in new.workers.items():
        old = previous.workers.get(worker_id) if previous is not None else None
        since = _since(old.low_since_ms if old else 0, worker_is_low(worker, config), new.at_ms)
        if since != worker.low_since_ms:
            workers[worker_id] = dataclasses.replace(worker, low_since_ms=since)
    return new.with_changes(live=live, workers=workers)


__all__ = ["ACTIVE", "INACTIVE", "INTERFERED", "OVERLOADED", "classify", "track", "variant_is_low", "worker_is_low"]
